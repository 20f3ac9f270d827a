#!/usr/bin/env bash
# The test command: fetches the model files and the test datasets if missing, checks PostgreSQL, and runs every
# test of the workspace against the real database, the real embedding model and the real embedded vector engine.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup-models.sh
scripts/fetch-datasets.sh
ensure_postgres
cargo test --workspace --locked "$@"
# The server-engine contract tests are ignored unless a Qdrant server is configured; then they must pass too.
if [ -n "${QDRANT_URL:-}" ]; then
  cargo test --locked -p audience-tools --test vector_contract -- --ignored
fi

# Shared defaults for the project's scripts (sourced, not run).
# A target directory outside the clone survives fresh clones, so CI and a second checkout reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/audience-target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

# Checks that PostgreSQL answers at DATABASE_URL; on a machine with a local Debian cluster that is down, starts it.
ensure_postgres() {
  if psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start >/dev/null 2>&1 || true
    done
    sleep 2
  fi
  if ! psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; then
    echo "PostgreSQL is not reachable at DATABASE_URL=$DATABASE_URL (start it, or: docker compose up -d postgres)" >&2
    return 1
  fi
}

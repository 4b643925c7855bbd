#!/usr/bin/env bash
# Ensure the system packages timebox needs for building, testing and the demo are present.
#
#   - PostgreSQL server + client (initdb, pg_ctl, postgres, psql) and pgbench
#     (postgresql-contrib): the throwaway clusters of the test harness and `timebox demo`.
#   - libclang-dev + clang: bindgen (used by the pg_query crate) loads libclang at build time.
#   - pkg-config.
#
# Idempotent: when everything is already there it does nothing. Needs no stdin (CI).
# It never starts the distribution's own PostgreSQL service; nothing here depends on it.
set -euo pipefail

# python3-asyncpg, python3-psycopg2, python3-psycopg, libpostgresql-jdbc-java: real drivers in the
# compatibility tests (tests/compat_wire.rs, tests/compat_drivers.rs); node-postgres comes from the
# npm registry into target/drivers/node (below), pgjdbc runs on the machine's java (or Debian's).
# jq: the README's walkthrough picks ids out of --json answers (run by tests/demo.rs).
PACKAGES=(postgresql postgresql-contrib libclang-dev clang pkg-config python3-asyncpg python3-psycopg2
    python3-psycopg libpostgresql-jdbc-java jq)

missing=()

have_initdb() {
    if [[ -n "${TIMEBOX_PG_BIN:-}" && -x "${TIMEBOX_PG_BIN}/initdb" ]]; then return 0; fi
    if command -v initdb >/dev/null 2>&1; then return 0; fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

have_libclang() {
    # libclang itself, not libclang-cpp (a different library that bindgen cannot use).
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
        || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null
}

have_initdb || missing+=("initdb (postgresql)")
command -v psql >/dev/null 2>&1 || missing+=("psql (postgresql-client)")
command -v pgbench >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null \
    || missing+=("pgbench (postgresql-contrib)")
have_libclang || missing+=("libclang (libclang-dev)")
command -v clang >/dev/null 2>&1 || missing+=("clang")
command -v pkg-config >/dev/null 2>&1 || missing+=("pkg-config")
/usr/bin/python3 -c "import asyncpg" >/dev/null 2>&1 || missing+=("asyncpg (python3-asyncpg)")
command -v jq >/dev/null 2>&1 || missing+=("jq")
/usr/bin/python3 -c "import psycopg2" >/dev/null 2>&1 || missing+=("psycopg2 (python3-psycopg2)")
/usr/bin/python3 -c "import psycopg" >/dev/null 2>&1 || missing+=("psycopg (python3-psycopg)")
[[ -f /usr/share/java/postgresql.jar ]] || missing+=("pgjdbc (libpostgresql-jdbc-java)")
if ! command -v java >/dev/null 2>&1; then
    missing+=("java (default-jre-headless)")
    PACKAGES+=(default-jre-headless)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=("node and npm (nodejs npm)")
    PACKAGES+=(nodejs npm)
fi

# node-postgres for tests/compat_drivers.rs, from the npm registry, beside the build (not global).
install_node_pg() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/drivers/node"
    if [[ -d "$dir/node_modules/pg" ]]; then return 0; fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-deps: npm not found; node-postgres not installed" >&2
        return 0
    fi
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --silent pg@8 </dev/null)
    echo "install-deps: installed node-postgres into $dir"
}

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all system dependencies present"
    install_node_pg
    exit 0
fi

echo "install-deps: missing: ${missing[*]}"

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install-deps: not root and no passwordless sudo; run this yourself (Debian/Ubuntu):" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: apt-get not found; install the equivalents of: ${PACKAGES[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update </dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" </dev/null
echo "install-deps: installed ${PACKAGES[*]}"
install_node_pg

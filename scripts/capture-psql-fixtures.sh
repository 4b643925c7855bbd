#!/usr/bin/env bash
# Captures the describe queries of one or more psql binaries as test fixtures (issue 12 item 2):
# tests/fixtures/psql/queries.sql, replayed by tests/psql_fixtures.rs through timebox under a read
# grant. Not run in CI; run it by hand when a psql release changes its queries.
#
# Usage: scripts/capture-psql-fixtures.sh /path/to/psql [/path/to/psql ...]
#
#   Each argument is a psql binary of the version to capture (any of 13-17; the machine's own
#   `psql` is 15). The queries are captured against a throwaway PostgreSQL cluster of the server in
#   $PG_BINDIR (default: the newest /usr/lib/postgresql/*/bin; the fixtures in the tree were taken
#   against PostgreSQL 15, the test cluster's version, because psql picks its query text by server
#   version). How a psql binary of another major was obtained is recorded in
#   tests/fixtures/psql/README.md.
#
# What it does: initdb + start on a Unix socket in a temporary directory (as the `postgres` system
# user when run as root), create the `shop` database with `public.items` as the test harness does,
# run tests/fixtures/psql/setup.sql, then for each meta-command of tests/fixtures/psql/commands.txt
# run `psql -X -E -c <command>` (ECHO_HIDDEN prints every query psql sends) and keep the printed
# queries. OIDs of the fixture objects are replaced by `{{key}}` placeholders (keys from
# tests/fixtures/psql/oids.sql) so the test can put its own cluster's OIDs back. A query that
# appears twice in one version is kept once. Then scripts/psql-fixtures-merge.py merges the capture
# into queries.sql, where each distinct query stands once with the psql and server majors that send
# it: the (server, psql) pairs captured now replace the ones recorded before, and for a server other
# than 15 a query the same psql sends to PostgreSQL 15 is left out. To capture another server:
#   PG_BINDIR=/path/to/16/bin scripts/capture-psql-fixtures.sh psql13 psql14 psql15 psql16 psql17
# (capture PostgreSQL 15 first: the other servers are compared with it). The cluster is stopped and
# deleted on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FIX=tests/fixtures/psql
[[ $# -ge 1 ]] || { sed -n '2,13p' "$0"; exit 2; }

PG_BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
as_pg=()
if [[ $(id -u) == 0 ]]; then
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
fi
stop() {
    "${as_pg[@]}" "$PG_BINDIR/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap stop EXIT

"${as_pg[@]}" "$PG_BINDIR/initdb" -D "$work/data" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$PG_BINDIR/pg_ctl" -D "$work/data" -l "$work/server.log" -w \
    -o "-k $work -p $port -c listen_addresses=''" start >/dev/null

admin=(psql -h "$work" -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1)
"${admin[@]}" -d postgres -c "CREATE ROLE timebox_read LOGIN" -c "CREATE DATABASE shop"
"${admin[@]}" -d shop -c "CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL,
    qty int NOT NULL DEFAULT 0)"
# client_min_messages: CREATE PUBLICATION warns that wal_level is not logical, which is fine here.
"${admin[@]}" -d shop -c "SET client_min_messages = error" -f "$FIX/setup.sql"
server=$("${admin[@]}" -d shop -At -c "SHOW server_version" | cut -d' ' -f1)
# Each psql's capture goes to $OUT_DIR/<major>.sql first, then into queries.sql (below).
OUT_DIR="$work/captured"
mkdir -p "$OUT_DIR"

# One sed expression per fixture OID: the OID as a whole word becomes {{key}}.
oid_sed="$work/oids.sed"
"${admin[@]}" -d shop -At -F'|' -f "$FIX/oids.sql" \
    | awk -F'|' '{ printf "s/\\b%s\\b/{{%s}}/g\n", $2, $1 }' >"$oid_sed"

for psql_bin in "$@"; do
    version=$("$psql_bin" --version | awk '{ print $3 }')
    major=${version%%.*}
    out="$OUT_DIR/$major.sql"
    {
        echo "-- Describe queries of psql $version, as sent to PostgreSQL $server; captured with"
        echo "-- \`psql -E\` by scripts/capture-psql-fixtures.sh (PostgreSQL licence, see README.md)."
        echo "-- Each query follows a \`--- <meta-command>\` line; {{key}} is an OID (oids.sql)."
    } >"$out"
    seen="$work/seen.$major"
    : >"$seen"
    while IFS= read -r cmd; do
        [[ -z $cmd || $cmd == '#'* ]] && continue
        # psql 13-15 frame each query in `********* QUERY **********` lines, 16+ in
        # `/******** QUERY *********/` comments.
        "$psql_bin" -h "$work" -p "$port" -U timebox_read -d shop -X -E -c "$cmd" 2>/dev/null \
            | awk -v cmd="$cmd" -v seen="$seen" '
                /^\/?\*+ QUERY \*+\/?$/ { inq = 1; q = ""; next }
                inq && /^\/?\*+\/?$/ {
                    inq = 0
                    key = q; gsub(/\n/, " ", key)
                    dup = 0
                    while ((getline line < seen) > 0) if (line == key) { dup = 1; break }
                    close(seen)
                    if (!dup) { print key >> seen; close(seen); printf "--- %s\n%s", cmd, q }
                    next
                }
                inq { q = q $0 "\n" }' \
            | sed -f "$oid_sed" >>"$out" || true
    done <"$FIX/commands.txt"
    echo "psql $version: $(grep -c '^--- ' "$out") queries sent to PostgreSQL $server"
done
python3 scripts/psql-fixtures-merge.py "$FIX/queries.sql" "${server%%.*}" "$OUT_DIR"/*.sql
echo "$FIX/queries.sql: $(grep -c '^--- ' "$FIX/queries.sql") distinct queries"

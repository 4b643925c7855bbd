#!/usr/bin/env bash
# End-to-end benchmark: pgbench against PostgreSQL directly, through PgBouncer (session mode) and
# through timebox (policy + audit on, and variants with each off), on this machine. See
# benches/README.md ("End-to-end").
#
#   scripts/bench.sh            full run (~9 minutes + the build): 4 s per pgbench run, 3 repetitions
#   scripts/bench.sh --quick    smoke run (< 2 minutes): 2 s per run, 1 repetition
#   scripts/bench.sh --perf     also profile timebox with perf, count syscalls (~1.5 min more)
#   PGCAT_BIN=/path/to/pgcat scripts/bench.sh …
#                               also PgCat (session mode) beside PgBouncer in every table
#   scripts/bench.sh --soak [MINUTES] [--soak-simple CLIENTS]
#                               only a soak: pgbench -M prepared -c 32 against timebox(write) for
#                               MINUTES (default 10) without a break, TPS/RSS/audit size every 10 s
#   scripts/bench.sh --no-build [--duration N] [--reps N] [--connect-duration N] [--idle-sessions N]
#                    [--scale N] [--max-wal-mib N] [--out DIR]
#
# Installs what is missing (PostgreSQL + pgbench via scripts/install-deps.sh, pgbouncer via apt-get;
# as root directly, else with passwordless sudo, else it prints what to install), builds
# `cargo build --release --locked --features bench-knobs` (the benchmark-only feature that lets the
# nopolicy/noaudit instances switch a feature off; never ship that build), then runs
# benches/e2e/bench.py in a temporary directory. Everything it starts (PostgreSQL, PgBouncer, the
# timebox instances) is stopped and the directory removed on exit, Ctrl-C or SIGTERM. Results: the
# table on stdout and target/bench-e2e/ (a soak: target/bench-e2e/soak/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

build=1
pyargs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick | --perf) pyargs+=("$1") ;;
        --no-build) build=0 ;;
        --soak)
            # MINUTES is optional: take the next argument only if it is a number.
            if [[ $# -ge 2 && "$2" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
                pyargs+=(--soak "$2")
                shift
            else
                pyargs+=(--soak 10)
            fi
            ;;
        --duration | --reps | --idle-sessions | --scale | --out | --connect-duration | --max-wal-mib | --soak-simple)
            [[ $# -ge 2 ]] || { echo "bench: $1 needs a value" >&2; exit 2; }
            pyargs+=("$1" "$2")
            shift
            ;;
        -h | --help)
            sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# ---------------------------------------------------------------------------- dependencies
scripts/install-deps.sh

have_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]
}

if ! have_pgbouncer; then
    echo "bench: pgbouncer is missing"
    if [[ "$(id -u)" -eq 0 ]]; then
        sudo_cmd=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo_cmd=(sudo -n)
    else
        echo "bench: not root and no passwordless sudo; install it yourself (Debian/Ubuntu):" >&2
        echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends pgbouncer" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "bench: apt-get not found; install PgBouncer (>= 1.14, for SCRAM pass-through) yourself" >&2
        exit 1
    fi
    "${sudo_cmd[@]}" apt-get update </dev/null
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer </dev/null
    have_pgbouncer || { echo "bench: pgbouncer still not found after installing it" >&2; exit 1; }
fi

command -v python3 >/dev/null 2>&1 || { echo "bench: python3 is required (standard library only)" >&2; exit 1; }
if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    echo "bench: running as root needs the postgres system user (created by the postgresql package)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------- build
if [[ $build -eq 1 ]]; then
    echo "bench: cargo build --release --locked --features bench-knobs"
    cargo build --release --locked --features bench-knobs
fi
TIMEBOX="$ROOT/target/release/timebox"
[[ -x "$TIMEBOX" ]] || { echo "bench: $TIMEBOX not found (drop --no-build)" >&2; exit 1; }

# ---------------------------------------------------------------------------- run, always clean up
WORK="$(mktemp -d "${TMPDIR:-/tmp}/timebox-bench.XXXXXX")"
# The postgres user (when we are root) must be able to reach its own subdirectories.
chmod 0711 "$WORK"
PY_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        wait "$PY_PID" 2>/dev/null || true
    fi
    # Backstop in case the harness died without cleaning up: stop what it recorded, by pid, only if
    # the pid still runs the program it recorded. The upstream cluster belongs to the recorded
    # `timebox demo-cluster` process: once that is gone, its guardian stops and deletes the cluster.
    if [[ -f "$WORK/pids" ]]; then
        while read -r pid name; do
            local exe
            exe="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
            case "$name:$exe" in
                pgbouncer:*pgbouncer* | pgcat:*pgcat* | timebox-*:*timebox*) kill -KILL "$pid" 2>/dev/null || true ;;
            esac
        done <"$WORK/pids"
    fi
    rm -rf -- "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# In the background so that a signal reaches our trap at once (bash defers traps while it waits for
# a foreground command); the trap forwards it to the harness as SIGTERM.
# PGCAT_BIN=/path/to/pgcat adds PgCat (session mode) beside PgBouncer in every table.
if [[ -n "${PGCAT_BIN:-}" ]]; then
    [[ -x "$PGCAT_BIN" ]] || { echo "bench: PGCAT_BIN=$PGCAT_BIN is not an executable" >&2; exit 1; }
    pyargs+=(--pgcat "$(cd "$(dirname "$PGCAT_BIN")" && pwd)/$(basename "$PGCAT_BIN")")
fi
python3 benches/e2e/bench.py --workdir "$WORK" --timebox "$TIMEBOX" "${pyargs[@]}" &
PY_PID=$!
wait "$PY_PID"

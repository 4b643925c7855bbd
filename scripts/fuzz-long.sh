#!/usr/bin/env bash
# The long fuzz run (issue 12 item 7): every property of tests/fuzz.rs for ROUNDS chunks of CHUNK
# cases (default 10 × 10⁶ = 10⁷ per property), each chunk with proptest's fresh random seed, JOBS
# chunks at a time, at low priority. Logs one line per chunk to target/fuzz-long/chunks.log; a
# failing chunk keeps its output (the shrunk case) beside it and proptest records it in
# tests/fuzz.proptest-regressions.
#
#   scripts/fuzz-long.sh [ROUNDS] [CHUNK] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}; chunk=${2:-1000000}; jobs=${3:-2}
out=target/fuzz-long; mkdir -p "$out"
bin=$(cargo test --release --test fuzz --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "fuzz":
        print(m["executable"])')
props=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p')
for r in $(seq 1 "$rounds"); do for p in $props; do echo "$r $p"; done; done |
    xargs -P "$jobs" -L 1 bash -c '
        s=$(date +%s)
        if PROPTEST_CASES='"$chunk"' nice -n 19 '"$bin"' --exact "$1" --test-threads=1 > '"$out"'/"$1.$0.out" 2>&1; then
            rc=0; rm -f '"$out"'/"$1.$0.out"; else rc=$?; fi
        echo "$(date -u +%FT%TZ) $1 chunk=$0 cases='"$chunk"' rc=$rc secs=$(( $(date +%s) - s ))" >> '"$out"'/chunks.log'
echo "done: $out/chunks.log"; grep -v "rc=0" "$out/chunks.log" && exit 1 || true

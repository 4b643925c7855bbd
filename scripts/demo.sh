#!/usr/bin/env bash
# The demo command (README): system dependencies, then `timebox demo`, which starts a throwaway
# PostgreSQL and a proxy in front of it. Extra arguments go to `timebox demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

exec cargo run --release --locked -- demo "$@"

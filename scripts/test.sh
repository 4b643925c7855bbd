#!/usr/bin/env bash
# The test command (README): system dependencies, then every test target, then the doctests.
# Wire tests start throwaway PostgreSQL clusters themselves (src/demo/cluster/); nothing else needs
# to be running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

echo "==> cargo test --locked --all-targets"
cargo test --locked --all-targets
echo "==> cargo test --locked --doc"
cargo test --locked --doc

echo "==> timebox: all tests passed (all targets + doctests)"

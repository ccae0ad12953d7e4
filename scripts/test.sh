#!/usr/bin/env bash
# The whole test suite (what CI runs): installs the Debian packages the tests
# use, then runs every unit and scenario test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --no-fail-fast "$@"

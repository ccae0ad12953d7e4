#!/usr/bin/env bash
# The whole test suite (what CI runs): installs the Debian packages the tests
# use, then runs every unit and scenario test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Imports point one way and launch/ reaches no thread (HACKING.md); the
# fixtures prove the check catches both.
python3 scripts/check-imports.py
for bad in cycle launch; do
  if python3 scripts/check-imports.py "tests/fixtures/import-check/$bad/src" >/dev/null; then
    echo "check-imports: missed the problem in tests/fixtures/import-check/$bad" >&2
    exit 1
  fi
done
python3 scripts/check-imports.py tests/fixtures/import-check/clean/src >/dev/null
cargo test --workspace --no-fail-fast "$@"

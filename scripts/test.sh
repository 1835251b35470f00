#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs the linter, the type checker and the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k age -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check -q durafs daemon tests scripts
.venv/bin/python -m mypy --no-error-summary durafs
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

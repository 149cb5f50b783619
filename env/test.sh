#!/usr/bin/env bash
# Quick start, part 2: set up the environment, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"

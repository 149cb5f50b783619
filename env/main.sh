#!/usr/bin/env bash
# Quick start, part 1: set up the environment and run the main job on the embedded tiny default.
# For now the main job is the Gaussian-mixture SiD benchmark (default 2-D, 8-mode world), written to runs/toy/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
exec .venv/bin/sidrepro toy --out runs/toy "$@"

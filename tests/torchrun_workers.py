"""Run a test worker script as 2 ranks under torchrun (gloo on CPU) and fail the test, with its output, if the
workers fail or hang. The workers get their own session, so a hang kills them too, not just torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_workers(script: str, *args: str, timeout: float = 120, nproc: int = 2) -> str:
    """``python -m torch.distributed.run --standalone`` of ``tests/<script>`` with ``args``; returns its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "tests" / script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{script} {' '.join(args[:1])} hung for {timeout:g} s:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{script} {' '.join(args[:1])} failed:\n{out[-5000:]}"
    return out

"""The code revision that produced a file: the package version and, in a git checkout, the commit and whether the
working tree had uncommitted changes. Recorded in checkpoints, student folders and metrics so that every number
names the code behind it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

_REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_revision() -> dict[str, Any]:
    """``{"version", "commit", "dirty"}``; ``commit`` is empty outside a git checkout (an installed wheel).

    ``dirty`` counts tracked files only: run outputs and venvs are untracked and say nothing about the code. Cached
    for the process (a training run does not change its own code)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"version": __version__, "commit": "", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"version": __version__, "commit": commit, "dirty": bool(status) if status is not None else None}

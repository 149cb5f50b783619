"""A run folder's ``status.json``: where an invocation of a distillation stands (state ``running``, ``stopped``,
``finished`` or ``failed``, images seen of the target, the last checkpoint and how long it took to write, the job's
deadline), and ``history.jsonl``, one line per invocation that ended. The trainer's rank 0 writes them; the
command line decides its exit status from them, and ``sidrepro status`` reads them on a login node, so this module
imports no torch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .atomic import write_json_atomic

STATUS_FILE = "status.json"
HISTORY_FILE = "history.jsonl"  # one line per invocation that ended: how a run got where it is, job by job


def read_status(run_dir: Path) -> dict:
    """The run folder's ``status.json`` ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_status(run_dir: Path, **fields) -> None:
    """Update ``status.json`` with ``fields`` (keeping the other keys), stamped with the time and the job id; an
    invocation's last status (stopped, finished, failed) is also appended to ``history.jsonl``."""
    status = {**read_status(run_dir), **fields, "updated": time.time(), "job_id": os.environ.get("SLURM_JOB_ID", "")}
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)
    if status.get("state") in ("stopped", "finished", "failed"):
        with (Path(run_dir) / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(status) + "\n")

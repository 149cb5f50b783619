"""DVC provenance round trip on the smoke workflow: run, commit the outputs to dvc.lock, push to a local remote, clone,
pull, and check that Snakemake has nothing to do, that `dvc metrics show` lists the table numbers, that a number
traces back to its checkpoint with matching hashes, and that one changed hyper-parameter reruns exactly the jobs
that depend on it."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = "workflow/config/smoke.yaml"
TARGET = "results/table1.csv"
STAGES = ["run@smoke", "tables@table1", "records"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
# What the workflow needs to run and what dvc.yaml hashes as dependencies.
PROJECT = ["Snakefile", "dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".gitignore", "workflow",
           "sidrepro", "env/constraints.txt"]


def _run(*cmd: str, cwd: Path, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run as {rule: count} (empty when there is nothing to do)."""
    if "Job stats:" not in output:
        return {}
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def _make_project(dest: Path) -> None:
    """A git repository holding the workflow, with a smaller smoke config: one teacher, data-free, no baselines."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PROJECT:
        src, dst = REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)
    config = yaml.safe_load((REPO / SMOKE).read_text())
    config["teachers"] = {"tiny-sana": {**config["teachers"]["tiny-sana"], "settings": ["data-free"]}}
    config.pop("sweep", None)  # the smoke sweep varies tiny-sd3, which this run leaves out
    config["baselines"] = {}
    config["tables"]["scores"] = []  # FID and CLIP are enough for the round trip; the scorers have their own tests
    (dest / SMOKE).write_text(yaml.safe_dump(config, sort_keys=False))
    _run("git", "init", "-q", cwd=dest)
    _run("git", "add", "-A", cwd=dest)
    _run("git", "commit", "-qm", "workflow", cwd=dest)


@pytest.mark.slow
def test_dvc_round_trip(tmp_path):
    project, clone, remote = tmp_path / "project", tmp_path / "clone", tmp_path / "remote"
    _make_project(project)
    snake = ("snakemake", TARGET, "--cores", "2", f"--configfile={SMOKE}")
    _run(*snake, cwd=project, timeout=600)
    ckpt = project / "work/smoke/runs/tiny-sana/data-free/checkpoints"
    ckpt_times = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}

    # DVC records and stores; it never reruns the workflow behind Snakemake's back (frozen stages).
    _run("dvc", "remote", "add", "-d", "local", str(remote), cwd=project)
    _run("dvc", "commit", "-f", *STAGES, cwd=project)
    repro = _run("dvc", "repro", *STAGES, cwd=project)
    assert "frozen" in repro.stdout + repro.stderr
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == ckpt_times
    _run("git", "add", "-A", cwd=project)
    _run("git", "commit", "-qm", "smoke run", cwd=project)
    _run("dvc", "push", *STAGES, cwd=project, timeout=300)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {o["path"] for o in lock["run@smoke"]["outs"]} == {"work/smoke"}

    # Another machine: clone, pull, and Snakemake agrees that everything is done.
    _run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "work").exists()
    _run("dvc", "pull", *STAGES, cwd=clone, timeout=300)
    _run("snakemake", "--touch", *snake[1:], cwd=clone)
    dry = _run("snakemake", "-n", *snake[1:], cwd=clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]

    shown = json.loads(_run("dvc", "metrics", "show", "--json", cwd=clone).stdout)
    numbers = next(iter(shown.values()))["data"]["results/table1.json"]["data"]["rows"]
    rows = {r["model"]: r for r in csv.DictReader((clone / TARGET).open(encoding="utf-8")) if r["model"]}
    assert set(numbers) == set(rows) == {"tiny-sana--data-free", "teacher--tiny-sana"}
    for model, row in rows.items():
        assert numbers[model]["FID_coco10k"]["ours"] == pytest.approx(float(row["FID_coco10k_ours"]))
        assert numbers[model]["CLIP_vitg14"]["paper"] == pytest.approx(float(row["CLIP_vitg14_paper"]))

    trace = json.loads(_run("sidrepro", "provenance", TARGET, "--row", "tiny-sana--data-free", "--metric",
                            "FID_coco10k", "--json", cwd=clone).stdout)
    assert trace["metrics"]["matches"] and trace["samples"]["matches"] and trace["reference_stats"]["matches"]
    assert trace["model"]["checkpoint"]["exists"] and trace["model"]["params"]["teacher"] == "tiny-sana"
    assert trace["model"]["train_code"]["version"] and trace["eval_code"]["version"]
    assert {d["stage"] for d in trace["dvc"]} == {"run@smoke"}

    # One hyper-parameter of the distillation changes: exactly the student's jobs rerun, not the data, the reference,
    # the teacher's samples or its metrics.
    config = yaml.safe_load((clone / SMOKE).read_text())
    config["distill"]["set"]["lsg"] = 50.0
    (clone / SMOKE).write_text(yaml.safe_dump(config, sort_keys=False))
    counts = _job_counts(_run("snakemake", "-n", *snake[1:], cwd=clone).stdout)
    assert counts == {"distill": 1, "export": 1, "training_curves": 1, "fid_curve": 1, "sample": 2,
                      "merge_samples": 1, "evaluate": 1, "sample_grid": 1, "table": 1, "total": 10}, counts

"""The SLURM profile on a real one-node SLURM controller with fake GPUs (tests/slurm_cluster.py; slow, root): the
smoke chain of one teacher through `--profile workflow/profiles/slurm`. What the paper config submits is pinned in
tests/test_slurm_profile.py, the launch command lines in tests/test_launch.py, a real two-node run in
tests/test_slurm_multinode.py, time limits in tests/test_time_limit.py."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import NUM_GPUS, Cluster, slurm_cluster

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROFILE = "workflow/profiles/slurm"


def _copy_workflow(folder: Path) -> None:
    shutil.copy(REPO / "Snakefile", folder / "Snakefile")
    shutil.copytree(REPO / "workflow", folder / "workflow")


# ---------------------------------------------------------------- a real one-node SLURM cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node SLURM cluster with 2 fake GPUs for this module's tests (skipped without root or apt)."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _sacct(cluster: Cluster) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "State", "AllocTRES", "Comment", "SubmitLine"]
    out = cluster.run("sacct", "--parsable2", "--noheader", "-X", f"--format={','.join(fields)}")
    # SubmitLine last: the command line may itself hold the separator
    return [dict(zip(fields, line.split("|", len(fields) - 1), strict=True)) for line in out.splitlines()]


def _wait_for_job(cluster: Cluster, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = {r["JobID"]: r["State"] for r in _sacct(cluster)}.get(job_id, "")
        if state and state not in ("PENDING", "RUNNING"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state!r} after {timeout} s\n{cluster.logs()}")


@pytest.mark.slow
def test_per_node_step_runs_beside_the_step_that_holds_the_gpus(cluster, tmp_path):
    """As Snakemake's job step does, an outer `srun -n1` holds both GPUs; inside it the launcher finds the head node
    with the real scontrol and its per-node srun still starts (--overlap) and sees the GPUs."""
    (tmp_path / "inner.py").write_text(
        "import os, subprocess, sys\n"
        "from sidrepro.commands.launch import per_node_srun, slurm_hostnames\n"
        "print('HEAD', slurm_hostnames(os.environ['SLURM_JOB_NODELIST'])[0], flush=True)\n"
        "task = ['sh', '-c', 'echo TASK $(hostname) $CUDA_VISIBLE_DEVICES']\n"
        "sys.exit(subprocess.call(per_node_srun(1) + task))\n")
    script = tmp_path / "job.sh"
    # Like the job step: every SLURM_* variable but the job id dropped, then `srun -n1` with the job's GPUs.
    script.write_text("#!/bin/bash\nfor v in $(compgen -v SLURM_); do [ $v = SLURM_JOB_ID ] || unset $v; done\n"
                      f"unset CUDA_VISIBLE_DEVICES\nsrun -n1 --gpus=2 {sys.executable} {tmp_path / 'inner.py'}\n")
    out = tmp_path / "job.out"
    job = cluster.run("sbatch", "--parsable", "--gpus=2", "-t", "2", f"--output={out}", str(script)).strip()
    assert _wait_for_job(cluster, job) == "COMPLETED", out.read_text()
    text = out.read_text()
    assert f"HEAD {cluster.node}" in text and f"TASK {cluster.node} 0,1" in text, text


@pytest.mark.slow
def test_smoke_chain_of_one_teacher_through_the_slurm_profile(cluster, tmp_path):
    """One tiny teacher, data-free only, no baselines: every rule is an sbatch job; distill and sample ask for a GPU,
    which the fake GPUs of the node provide. Everything runs under a hard 600 s limit."""
    _copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text(encoding="utf-8"))
    cfg["teachers"] = {"tiny-sana": {**cfg["teachers"]["tiny-sana"], "settings": ["data-free"], "teacher_row": False}}
    cfg.pop("sweep", None)  # the smoke sweep varies tiny-sd3, which this run leaves out
    cfg["baselines"] = {}
    cfg["tables"]["scores"] = []  # GenEval and the preference scores have their own tests; keep the chain short
    cfg["sample"]["num_shards"] = 1
    cfg["resources"] = {"distill": {"gpu": 1}, "sample": {"gpu": 1}}
    (tmp_path / "slurm-smoke.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}
    cmd = ["timeout", "-s", "KILL", "600", SNAKEMAKE, "--profile", PROFILE, "results/table1.csv",
           "--configfile=slurm-smoke.yaml", "--slurm-init-seconds-before-status-checks=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:] + cluster.logs()

    rows = list(csv.DictReader((tmp_path / "results/table1.csv").open(encoding="utf-8")))
    assert [r["model"] for r in rows if r["model"]] == ["tiny-sana--data-free"]
    records = [r for r in _sacct(cluster) if r["Comment"].startswith("rule_")]  # the plugin's jobs only
    print(*(f"{r['JobID']}|{r['State']}|{r['AllocTRES']}|{r['Comment']}" for r in records), sep="\n")
    assert {r["State"] for r in records} == {"COMPLETED"}, records
    # The plugin names each job by its rule in the comment (the job name is the run's id).
    jobs = {r["Comment"].removeprefix("rule_").split("_wildcards_")[0]: r for r in records}
    assert {"zoo", "synthetic_coco", "coco_reference", "tiny_clip", "distill", "export", "sample",
            "evaluate"} <= set(jobs), jobs
    assert not {"prompts", "merge_samples", "table"} & set(jobs)  # jobs of seconds run where Snakemake runs
    for rule in ("distill", "sample"):
        assert "--gpus=1" in jobs[rule]["SubmitLine"], jobs[rule]
    assert "gres/gpu=1," in jobs["sample"]["AllocTRES"], jobs["sample"]
    # --exclusive: distill holds the whole node, all its GPUs included
    assert "--exclusive" in jobs["distill"]["SubmitLine"]
    assert f"gres/gpu={NUM_GPUS}," in jobs["distill"]["AllocTRES"], jobs["distill"]
    assert "gres/gpu" not in jobs["export"]["AllocTRES"] and "--gpus" not in jobs["export"]["SubmitLine"]

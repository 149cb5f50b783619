"""The SLURM profile: what a multi-node allocation asks for (a fake sbatch), and (slow, root) the smoke chain of one
teacher through `--profile workflow/profiles/slurm` on a real one-node SLURM controller with fake GPUs
(tests/slurm_cluster.py). The launch command lines are pinned in tests/test_launch.py, a real two-node run in
tests/test_slurm_multinode.py."""

from __future__ import annotations

import csv
import os
import re
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


def _fake_slurm(folder: Path) -> tuple[Path, Path]:
    """SLURM commands that record sbatch's arguments and refuse every job (so Snakemake stops at once)."""
    bin_dir, calls = folder / "fakebin", folder / "sbatch-calls.txt"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "sbatch: error: fake" >&2\nexit 1\n')
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho PARTITION; echo gpu*\n")
    for name in ("sacct", "sacctmgr", "scontrol", "squeue", "sshare"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, calls


def test_paper_profile_asks_for_whole_gpu_nodes(tmp_path):
    """Paper config + SLURM profile: a one-node teacher asks for --gpus=8 on one node; FLUX (nodes: 2) for 8 GPUs
    per node (gres) on two exclusive nodes, and its command line says --nproc 8 --nnodes 2."""
    _copy_workflow(tmp_path)
    bin_dir, calls = _fake_slurm(tmp_path)
    targets = ["work/paper/runs/sana-0.6b/data-free.done", "work/paper/runs/flux-dev-512/data-free.done"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    dry = subprocess.run([SNAKEMAKE, "-n", "-p", "--forceall", "--profile", PROFILE, *targets], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert "--teacher flux-dev-512 --setting data-free" in dry.stdout and "--nproc 8 --nnodes 2" in dry.stdout
    # The distill jobs' inputs (teacher weights, prompts) as empty files: only the two distill jobs are submitted.
    inputs = re.findall(r"^rule distill:\n\s+input: (.*)$", dry.stdout, flags=re.MULTILINE)
    for path in {p for line in inputs for p in line.split(", ")}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    proc = subprocess.run(["timeout", "-s", "KILL", "120", SNAKEMAKE, "--profile", PROFILE, *targets,
                           "--slurm-init-seconds-before-status-checks=1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert proc.returncode not in (0, -9, 137), proc.stderr[-3000:]  # refused by the fake sbatch, not hung
    lines = {("flux" if "flux" in line else "sana"): f" {line} " for line in calls.read_text().splitlines()}
    flux, sana = lines["flux"], lines["sana"]
    for option in (" --nodes=2 ", " --gres=gpu:8 ", " --exclusive ", " --mem 512000 ", " -t 4320 ",
                   " --cpus-per-task=16 ", " -p gpu "):
        assert option in flux, (option, flux)
    assert "--gpus=" not in flux  # --gpus counts per job: 8 spread over two nodes
    for option in (" --nodes=1 ", " --gpus=8 ", " --exclusive ", " --mem 256000 "):
        assert option in sana, (option, sana)
    assert "--gres" not in sana


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
    assert {"zoo", "prompts", "synthetic_coco", "coco_reference", "tiny_clip", "distill", "export", "sample",
            "merge_samples", "evaluate", "table"} <= set(jobs), jobs
    for rule in ("distill", "sample"):
        assert "--gpus=1" in jobs[rule]["SubmitLine"], jobs[rule]
    assert "gres/gpu=1," in jobs["sample"]["AllocTRES"], jobs["sample"]
    # --exclusive: distill holds the whole node, all its GPUs included
    assert "--exclusive" in jobs["distill"]["SubmitLine"]
    assert f"gres/gpu={NUM_GPUS}," in jobs["distill"]["AllocTRES"], jobs["distill"]
    assert "gres/gpu" not in jobs["export"]["AllocTRES"] and "--gpus" not in jobs["export"]["SubmitLine"]

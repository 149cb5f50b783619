"""What the SLURM profile submits for the paper config, recorded by a fake `sbatch`: the cluster block's partition,
account and GPU type reach every GPU job and no other, GPU requests are right for one- and two-node jobs, every job
asks for the profile's runtime cap, and the jobs of seconds (localrules) are never batch jobs.

One job of every rule is made submittable by creating its inputs, then asked for on its own; the fake sbatch records
its arguments and refuses it, so Snakemake stops there and nothing runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROFILE = "workflow/profiles/slurm"
CLUSTER_BLOCK = """\
  gpu-job: &gpu-job
    runtime: *runtime
    slurm_partition: "'gpu'"
    slurm_account: "'proj'"
    gpu_model: "'h100'"
  cpu-job: &cpu-job
    slurm_partition: "'cpu'"
    slurm_account: "'proj'"
    mem_mb: 4000
"""
GPU_RULES = {"coco_reference", "distill", "sample", "geneval_sample", "evaluate", "score"}


def _workflow(folder: Path) -> None:
    shutil.copy(REPO / "Snakefile", folder / "Snakefile")
    shutil.copytree(REPO / "workflow", folder / "workflow")
    profile = folder / PROFILE / "config.yaml"
    text = profile.read_text()
    start, end = text.index("  gpu-job: &gpu-job"), text.index("# ------", text.index("  cpu-job: &cpu-job"))
    profile.write_text(text[:start] + CLUSTER_BLOCK + text[end:])


def _fake_slurm(folder: Path) -> tuple[Path, Path]:
    """SLURM client commands: sbatch records its arguments and refuses the job; the rest answer as a cluster with
    partitions gpu and cpu and the account proj."""
    bin_dir, calls = folder / "fakebin", folder / "sbatch-calls.txt"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "sbatch: error: fake" >&2\nexit 1\n')
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho PARTITION; echo gpu; echo 'cpu*'\n")
    (bin_dir / "sacctmgr").write_text("#!/bin/sh\necho proj\n")
    for name in ("sacct", "scontrol", "squeue", "sshare"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, calls


def _jobs(dry_run: str) -> list[dict]:
    """Rule, inputs, outputs and wildcards of every job block of a dry run's output."""
    jobs = []
    for block in re.split(r"\n\s*\n", dry_run):
        head = re.search(r"^(local)?rule (\w+):$", block, flags=re.MULTILINE)
        if head is None:
            continue
        fields = dict(re.findall(r"^\s+(input|output|wildcards|resources): (.*)$", block, flags=re.MULTILINE))
        gpus = re.search(r"\bgpu=(\d+)", fields.get("resources", ""))
        jobs.append({"rule": head.group(2), "input": fields.get("input", "").split(", "),
                     "output": fields.get("output", "").split(", "), "wildcards": fields.get("wildcards", ""),
                     "gpu": int(gpus.group(1)) if gpus else 0})
    return jobs


def test_profile_settings_reach_every_gpu_job_and_no_other(tmp_path):
    _workflow(tmp_path)
    bin_dir, calls = _fake_slurm(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    dry = subprocess.run([SNAKEMAKE, "-n", "--forceall", "--profile", PROFILE, "results/table1.csv",
                          "results/table2.csv"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = _jobs(dry.stdout)
    # The profile reaches the GPU jobs through its list of GPU rules: it must be exactly the rules whose jobs ask for
    # GPUs, or a new GPU rule would run without the GPU partition and type.
    assert {job["rule"] for job in jobs if job["gpu"] > 0} == GPU_RULES
    local = set(re.search(r"LOCAL_RULES = \[(.*?)\]", (REPO / "workflow/rules/common.smk").read_text(),
                          flags=re.DOTALL).group(1).replace('"', "").replace("\n", "").replace(" ", "").split(","))
    # One job per rule, both distillations of a one-node (SANA) and a two-node (FLUX) teacher, one local job.
    chosen: dict[str, dict] = {}
    for job in jobs:
        key = job["rule"]
        if job["rule"] == "distill":
            key = f"distill-{'flux' if 'flux' in job['wildcards'] else 'sana'}"
            if "data-free" not in job["wildcards"] or not re.search(r"teacher=(sana-0.6b|flux-dev-512),",
                                                                    job["wildcards"]):
                continue
        chosen.setdefault(key, job)
    assert {"distill-sana", "distill-flux", *GPU_RULES - {"distill"}, "merge_samples", "fetch"} <= set(chosen)
    for path in {i for job in chosen.values() for i in job["input"] if i}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    outputs = ""
    for job in chosen.values():
        if job["rule"] in local and job["rule"] != "merge_samples":
            continue  # local jobs would run here; one is enough to show that they stay out of sbatch
        for path in job["output"]:  # another chosen job's input, touched above: this job must still run
            if (tmp_path / path).is_file():
                (tmp_path / path).unlink()
        proc = subprocess.run(["timeout", "-s", "KILL", "120", SNAKEMAKE, "--profile", PROFILE, *job["output"],
                               "--allowed-rules", job["rule"], "--slurm-init-seconds-before-status-checks=1"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode not in (0, -9, 137), proc.stderr[-3000:]  # refused by the fake sbatch, not hung
        outputs += proc.stdout + proc.stderr
        for path in job["output"]:  # Snakemake removes a failed job's outputs; later jobs may need them
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).touch()
    submitted = {}
    for line in calls.read_text().splitlines():
        rule = re.search(r"--comment '?rule_(\w+?)(_wildcards_|'| )", line).group(1)
        if rule == "distill":
            rule = f"distill-{'flux' if 'flux' in line else 'sana'}"
        submitted.setdefault(rule, f" {line} ")
    print(*(f"{k}: {v}" for k, v in sorted(submitted.items())), sep="\n")

    assert not local & set(submitted), "jobs of seconds must run where Snakemake runs"
    assert "localrule merge_samples:" in outputs  # it did run, where Snakemake runs
    assert {"distill-sana", "distill-flux", *GPU_RULES - {"distill"}, "fetch", "export"} <= set(submitted)
    for rule, line in submitted.items():
        assert " -A proj " in line, (rule, line)
        if rule.split("-")[0] in GPU_RULES:  # the profile's runtime cap, whatever the config says
            assert " -p gpu " in line and "--gpus=h100:" in line and "--gres" not in line, (rule, line)
            assert " -t 240 " in line, (rule, line)
        else:
            assert " -p cpu " in line and "--gpus" not in line and "--gres" not in line, (rule, line)
    sana, flux = submitted["distill-sana"], submitted["distill-flux"]
    assert " --gpus=h100:8 " in sana and " --nodes=1 " in sana and " --exclusive " in sana
    # Two whole nodes of 8 GPUs: 16 GPUs in all (never --gpus=h100:0 or a per-job 8 spread over two nodes)
    assert " --gpus=h100:16 " in flux and " --nodes=2 " in flux and " --exclusive " in flux
    assert "--nproc 8 --nnodes 2" in dry.stdout and "--on-stop requeue" in dry.stdout
    assert " --requeue " in sana


def test_profile_block_reaches_exactly_the_gpu_rules():
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    assert set(profile["set-resources"]) == GPU_RULES
    cap = profile["x-cluster"]["runtime"]
    assert profile["default-resources"]["runtime"] == cap
    assert all(profile["set-resources"][rule]["runtime"] == cap for rule in GPU_RULES)

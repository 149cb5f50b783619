"""Two nodes for real (slow, root): a SLURM cluster whose two slurmd daemons run in network namespaces of their own
(tests/slurm_cluster.py with ``nodes=2``, tests/node_network.py) runs `sidrepro distill --nproc 1 --nnodes 2`: one
torchrun per node, a c10d rendezvous across the namespaces, gloo FSDP over the veth links. Its weights equal those of
a one-node two-process run bit for bit; rank 1 runs on node2, in node2's namespace. Counts that do not fit the
allocation fail the job with a named error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slurm_cluster import Cluster, slurm_cluster

from sidrepro.distill.checkpoint import export_weights

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]
SETTINGS = ["--set", "duration_kimg=0.008", "--set", "checkpoint_ticks=1", "--set", "snapshot_ticks=100"]
CKPT = "checkpoints/ckpt-0000000008"  # 8 images: 2 iterations of the tiny preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two nodes (node1, node2), 2 CPUs and 2 fake GPUs each, each in its own network namespace."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2) as c:
        yield c


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _no_slurm_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "OMP_NUM_THREADS": "1"}


def _sacct(cluster: Cluster, job: str) -> list[str]:
    return cluster.run("sacct", "-j", job, "--noheader", "--parsable2",
                       "--format=JobID,JobName,State,ExitCode,NodeList,AllocTRES").splitlines()


def _run_job(cluster: Cluster, tmp_path: Path, command: str, *sbatch: str, timeout: float = 240) -> tuple[str, str]:
    """Submit ``command`` as a batch job with ``sbatch`` options; wait for it; (job id, its output)."""
    script, out = tmp_path / "job.sh", tmp_path / "job.out"
    script.write_text(f"#!/bin/bash\ncd {tmp_path}\n{command}\n")
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}  # the job inherits it: one thread per rank, as the reference
    job = subprocess.run(["sbatch", "--parsable", *sbatch, "-t", "10", f"--output={out}", str(script)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.run("sacct", "-j", job, "-X", "--noheader", "--format=State").strip()
        if state and state not in ("PENDING", "RUNNING"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"job {job} still running after {timeout} s\n{out.read_text()}\n{cluster.logs()}")
    return job, out.read_text()


class RankWatch:
    """While a job runs: which node's network namespace each rank process (RANK=r) lives in."""

    def __init__(self, cluster: Cluster) -> None:
        self.namespaces, self.seen = cluster.namespaces, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for node, ns in self.namespaces.items():
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    except OSError:  # ended meanwhile
                        continue
                    ranks = [e[5:].decode() for e in environ if e.startswith(b"RANK=")]
                    if b"sidrepro.cli" in cmdline and ranks:
                        self.seen.setdefault(ranks[0], node)
            time.sleep(0.3)

    def __enter__(self) -> RankWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _distill_args(zoo: Path, prompt_file: Path) -> list[str]:
    return ["--teacher", "tiny-sana", "--snapshot", str(zoo), "--prompts", str(prompt_file), "--quiet", *SETTINGS]


@pytest.fixture(scope="module")
def one_node_run(tiny_zoo, prompt_file, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same distillation on one node, two processes, no SLURM."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    subprocess.run([str(BIN / "sidrepro"), "distill", "--out", str(out), "--nproc", "2",
                    *_distill_args(tiny_zoo["tiny-sana"], prompt_file)],
                   check=True, env=_no_slurm_env(), timeout=240, capture_output=True)
    return out


def _assert_rank_1_on_node2(out: str) -> None:
    """From a job's output (srun --label: "<task>: "): one torchrun per node, task 1 bound on node2 holding global
    rank 1, task 0 on node1 holding rank 0."""
    assert re.search(r"^1: cpu-bind=MASK - node2, task +1 ", out, flags=re.MULTILINE), out
    assert re.search(r"^0: cpu-bind=MASK - node1, task +0 ", out, flags=re.MULTILINE), out
    assert re.search(r"^1: .*global_ranks=\[1\]$", out, flags=re.MULTILINE), out
    assert re.search(r"^0: .*global_ranks=\[0\]$", out, flags=re.MULTILINE), out


def _assert_same_weights(one: Path, two: Path, teacher: Path) -> None:
    initial = load_file(teacher / "transformer" / "diffusion_pytorch_model.safetensors")
    for name in ("generator", "fake"):
        a, b = export_weights(one / CKPT, name), export_weights(two / CKPT, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        changed = sum(not torch.equal(a[k], initial[k].to(a[k].dtype)) for k in a)
        print(f"{name}: {len(a)} tensors equal bit for bit to the one-node run without SLURM; "
              f"{changed} differ from the teacher")
        assert changed > 0  # it trained: equal weights are not the untouched teacher's


# Snakemake's job step: every SLURM_* variable but the job id dropped, then `srun -n1` (the srun on PATH sets
# SLURM_CONF again).
IN_A_STEP = "for v in $(compgen -v SLURM_); do [ $v = SLURM_JOB_ID ] || unset $v; done\nsrun -n1 "
LAUNCHES = {  # name: (nodes x ranks per node, in Snakemake's job step)
    "2 nodes x 1, batch script": (2, 1, False),
    "2 nodes x 1, job step": (2, 1, True),
    "1 node x 2, job step": (1, 2, True),
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_slurm_job_trains_the_weights_of_a_one_node_run(cluster, tiny_zoo, prompt_file, one_node_run, launch,
                                                         tmp_path):
    """The same launch path for one and two nodes: the per-node srun step, its CPU binding, the rendezvous under
    the job's id, and the weights of the run without SLURM."""
    nnodes, nproc, in_step = LAUNCHES[launch]
    command = " ".join([str(BIN / "sidrepro"), "distill", "--out", str(tmp_path / "run"), "--nproc", str(nproc),
                        "--nnodes", str(nnodes), *_distill_args(tiny_zoo["tiny-sana"], prompt_file)])
    with RankWatch(cluster) as ranks:
        job, out = _run_job(cluster, tmp_path, (IN_A_STEP if in_step else "") + command, f"--nodes={nnodes}",
                            f"--gres=gpu:{nproc}", f"--cpus-per-task={nproc}")
    records = _sacct(cluster, job)
    print(*records, sep="\n")
    print(*(line for line in out.splitlines() if re.search(r"cpu-bind|global_ranks|master_addr|rdzv_endpoint|run_id",
                                                            line)), sep="\n")
    print("rank -> node namespace:", ranks.seen)
    assert records[0].split("|")[2] == "COMPLETED", out[-5000:] + cluster.logs()
    step = {r.split("|")[0]: r.split("|")[4] for r in records}[f"{job}.{1 if in_step else 0}"]
    assert step == ("node[1-2]" if nnodes == 2 else "node1"), records  # the per-node step

    assert re.search(r"rdzv_endpoint +: node1:\d+$", out, flags=re.MULTILINE), out
    assert re.search(rf"run_id +: {job}-0$", out, flags=re.MULTILINE), out
    if nnodes == 2:
        _assert_rank_1_on_node2(out)
        # Seen from outside the job: each rank's process lived in its node's network namespace.
        assert ranks.seen == {"0": "node1", "1": "node2"}, ranks.seen
    else:
        assert re.search(r"^0: .*global_ranks=\[0, 1\]$", out, flags=re.MULTILINE), out
        assert ranks.seen == {"0": "node1", "1": "node1"}, ranks.seen
    _assert_same_weights(one_node_run, tmp_path / "run", tiny_zoo["tiny-sana"])


def test_node_counts_that_do_not_fit_the_allocation_fail_the_job_with_a_named_error(cluster, tiny_zoo, tmp_path):
    base = f"{BIN / 'sidrepro'} distill --teacher tiny-sana --snapshot {tiny_zoo['tiny-sana']} --out {tmp_path}/r"
    job, out = _run_job(cluster, tmp_path, f"{base} --nproc 1 --nnodes 3", "--nodes=2", "--gres=gpu:1")
    assert f"sidrepro distill: error: --nnodes 3 does not divide the 2 GPUs of SLURM job {job} " in out, out
    assert "FAILED" in _sacct(cluster, job)[0]
    job, out = _run_job(cluster, tmp_path, f"{base} --nproc 1 --nnodes 4", "--nodes=2", "--gres=gpu:2")
    assert f"error: --nnodes 4 but SLURM job {job} holds 2 node(s) (node1, node2): submit it with --nodes=4" in out


def test_two_node_teacher_through_the_slurm_profile(cluster, tiny_zoo, tmp_path):
    """A smoke config whose teacher asks for `resources: {gpu: 1, nodes: 2}`: the profile submits distill on two
    nodes, it trains there, and its weights equal the same command's on one node with two processes."""
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    cfg = yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text(encoding="utf-8"))
    cfg["teachers"] = {"tiny-sana": {**cfg["teachers"]["tiny-sana"], "settings": ["data-free"],
                                     "resources": {"gpu": 1, "nodes": 2}}}
    cfg.pop("sweep", None)  # the smoke sweep varies tiny-sd3, which this run leaves out
    cfg["baselines"] = {}
    (tmp_path / "two-nodes.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    target = "work/smoke/runs/tiny-sana/data-free.done"
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["timeout", "-s", "KILL", "420", str(BIN / "snakemake"), "--profile",
                           "workflow/profiles/slurm", target, "--configfile=two-nodes.yaml",
                           "--slurm-init-seconds-before-status-checks=2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:] + cluster.logs()
    log = (tmp_path / "work/smoke/logs/distill/tiny-sana-data-free.log").read_text()
    distill = [r for r in cluster.run("sacct", "-X", "--noheader", "--parsable2",
                                      "--format=JobID,State,NodeList,Comment").splitlines() if "rule_distill" in r]
    assert len(distill) == 1 and "|COMPLETED|node[1-2]|" in distill[0], distill
    print(*_sacct(cluster, distill[0].split("|")[0]), sep="\n")
    _assert_rank_1_on_node2(log)

    # The same command as the job ran, on one node with two processes and no SLURM.
    shell = re.search(r"sidrepro distill --teacher tiny-sana [^>\n]*", proc.stdout + proc.stderr)
    assert shell and "--nproc 1 --nnodes 2" in shell[0], proc.stdout[-3000:] + proc.stderr[-3000:]
    command = shell[0].replace("--nproc 1 --nnodes 2", "--nproc 2 --nnodes 1").replace(
        "work/smoke/runs/tiny-sana/data-free", "one-node")
    subprocess.run(f"{BIN}/{command}", shell=True, cwd=tmp_path, env=_no_slurm_env(), check=True, timeout=240,
                   capture_output=True)
    _assert_same_weights(tmp_path / "one-node", tmp_path / "work/smoke/runs/tiny-sana/data-free",
                         tmp_path / "work/smoke/zoo/tiny-sana")

"""How ``sidrepro distill --nproc N --nnodes M`` starts its ranks: torchrun on one node, one torchrun per node of a
SLURM allocation, or this node's torchrun of a multi-node run whose other nodes the user starts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping

DEFAULT_PORT = "29500"


def slurm_hostnames(nodelist: str) -> list[str]:
    """The host names of a SLURM node list (``node[01-02]`` -> node01, node02), as ``scontrol`` expands them."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def per_node_srun(nnodes: int) -> list[str]:
    """``srun`` options that start one task on each of ``nnodes`` nodes of the current SLURM job.

    ``--overlap``: Snakemake runs the job's command inside a job step that already holds the first node's CPUs and
    GPUs; without it the new step would wait for them forever. Explicit counts override the outer step's
    SLURM_NNODES/SLURM_NTASKS, which srun would otherwise read from the environment (one node, one task).
    """
    return ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1"]


def torchrun_command(nproc: int, nnodes: int, argv: list[str], env: Mapping[str, str] | None = None,
                     hostnames: Callable[[str], list[str]] = slurm_hostnames) -> list[str]:
    """The command that runs ``python -m sidrepro.cli ARGV`` as ``nproc`` ranks on each of ``nnodes`` nodes.

    One node: ``torchrun --standalone``. Several nodes inside a SLURM job (``SLURM_JOB_ID`` set): ``srun`` starts one
    torchrun per node of the allocation, which meet (c10d rendezvous) on its first node at ``MASTER_PORT`` (default
    29500) under the job id. Several nodes elsewhere: this node's torchrun, meeting at ``MASTER_ADDR:MASTER_PORT``;
    the same command must be started on every node.
    """
    env = os.environ if env is None else env
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    ranks = ["-m", "sidrepro.cli", *argv]
    if nnodes == 1:
        return [*torchrun, "--standalone", *ranks]
    port = env.get("MASTER_PORT", DEFAULT_PORT)
    if "SLURM_JOB_ID" not in env:
        return [*torchrun, "--rdzv_backend=c10d", f"--rdzv_endpoint={env.get('MASTER_ADDR', 'localhost')}:{port}",
                *ranks]
    hosts = hostnames(env["SLURM_JOB_NODELIST"])
    if len(hosts) < nnodes:  # fewer nodes than ranks expect: the rendezvous would wait forever
        raise SystemExit(f"--nnodes {nnodes} but SLURM job {env['SLURM_JOB_ID']} has {len(hosts)} node(s) "
                         f"({env['SLURM_JOB_NODELIST']}); ask for nodes={nnodes}")
    rdzv = ["--rdzv_backend=c10d", f"--rdzv_endpoint={hosts[0]}:{port}", f"--rdzv_id={env['SLURM_JOB_ID']}"]
    return [*per_node_srun(nnodes), *torchrun, *rdzv, *ranks]

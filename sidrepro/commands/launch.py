"""How ``sidrepro distill --nproc N --nnodes M`` starts its ranks: one launch path from one node to many.

Inside a SLURM job (``SLURM_JOB_ID`` set), for any node count, ``srun`` starts one task per node, each a torchrun
agent with ``N`` ranks; the agents meet in a c10d rendezvous on the allocation's first node. Outside SLURM, torchrun
runs here: ``--standalone`` on one node, or, on several, this node's agent meeting at ``MASTER_ADDR:MASTER_PORT``
(start the same command on every node).

Settings, and why:

- **One task per node** (``srun --overlap --nodes=M --ntasks=M --ntasks-per-node=1``). ``--overlap``: Snakemake runs
  the job's command inside a step that already holds the first node's CPUs and GPUs; without it the new step waits
  for them forever. Explicit counts override the outer step's SLURM_NNODES/SLURM_NTASKS in the environment, and
  ``SLURM_JOB_NODELIST`` is set to the job's nodes: srun takes the allocation's nodes from it, and inside Snakemake's
  step (whose srun ran with the job's SLURM variables dropped) it names that step's one node, where srun refuses a
  step on more nodes ("Only allocated 1 nodes asked for 2").
- **CPUs** (``--cpus-per-task`` = the CPUs the job holds on a node, the smallest such count where nodes differ, and
  ``--cpu-bind=verbose,cores``): the node's torchrun and its ranks are confined to the job's cores on that node
  (``verbose`` logs each node's mask; a cluster without a task/affinity or task/cgroup plugin warns that it cannot
  bind and runs unbound); the ranks share those cores. Each node's step gets all of the job's GPUs on that node, as
  SLURM gives a step by default.
- **Threads per rank**: ``OMP_NUM_THREADS`` = CPUs per node // ranks per node, so the ranks of a node do not
  oversubscribe it; an ``OMP_NUM_THREADS`` already set for the launcher is an upper bound (``OMP_NUM_THREADS=1``
  gives one thread per rank whatever the node).
- **A failed node ends the job** (``--kill-on-bad-exit=1``): its ranks' peers would otherwise wait in a collective
  until the timeout. ``--label`` prefixes every output line with the node's task number.
- **The torchrun agent**: ``--max-restarts=0`` (a failure fails the job; the resubmitted or requeued job resumes
  from the last checkpoint, instead of an in-place restart that repeats on a broken node and hides the failure
  until the time limit), ``--monitor-interval=1`` (a dead rank is noticed within a second; polling ten times a
  second, torchrun's default, buys nothing in a run of hours), ``--signals-to-handle`` adds SIGUSR1 to torchrun's
  list, so SLURM's warning before a time limit (``--signal=USR1@lead``) reaches the ranks instead of killing the
  agent. After forwarding a signal the agent waits ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default 30) before
  it kills the ranks: set it longer than a step plus a checkpoint write where ranks save on that signal.
- **A rendezvous that survives a requeue**: id ``<job id>-<restart count>`` and, unless ``MASTER_PORT`` is set,
  port ``20000 + 4 * (job id mod 2500) + restarts mod 4`` (below the kernel's ephemeral ports; two jobs sharing a
  first node meet on different ports, and a requeued job never joins a store its previous run left behind). The
  restart count is scontrol's ``Restarts`` (Snakemake's job step drops SLURM_RESTART_COUNT with every other SLURM
  variable); a resubmission is a new job id.
- **Process-group and NCCL settings**, exported to every rank unless the environment already sets them (a site or a
  user overrides any of them):

  - ``SIDREPRO_PG_TIMEOUT_S=3600``: how long a collective may wait, read by the trainer's ``init_process_group``.
    Ranks wait in one while the slowest rank of the job writes its share of a checkpoint; a paper-scale FLUX
    checkpoint (two fp32 networks with Adam state, ~290 GB, ~145 GB per node of 8 GPUs) takes ~25 min at a
    pessimistic 100 MB/s per node of a shared filesystem, so one hour leaves a margin of two. torch's defaults
    (10 min for NCCL) would kill a healthy job there; a rank that died is caught sooner by ``--kill-on-bad-exit``.
  - ``TORCH_NCCL_ASYNC_ERROR_HANDLING=3``: the NCCL watchdog ends the process when a collective fails or times out,
    without ``ncclCommAbort`` (which can hang on a broken network); the exit then ends the job through
    ``--kill-on-bad-exit``. ``TORCH_NCCL_BLOCKING_WAIT=0``: no blocking wait (the watchdog covers timeouts without a
    CPU thread spinning per collective).
  - ``NCCL_DEBUG=WARN``: NCCL's warnings and errors in the job log, not its per-communicator INFO lines.
  - ``LOGLEVEL=INFO``: each torchrun agent logs its rendezvous endpoint and id, then the rendezvous' outcome (the
    master address, its node rank and its global ranks); the first lines to read when a multi-node job hangs or a
    rank fails.

  Network interfaces (``NCCL_SOCKET_IFNAME``, ``GLOO_SOCKET_IFNAME``, ``NCCL_IB_*``) belong to the cluster: set them
  in the environment of the job where needed (``srun`` passes the environment on). Ranks find their own address by
  their host name, as on any cluster whose node names resolve to the nodes' addresses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_PORT = "29500"
CPU_BIND = "verbose,cores"
SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"  # torchrun's default list plus SLURM's warning signal
RANK_DEFAULTS = {
    "SIDREPRO_PG_TIMEOUT_S": "3600",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    "TORCH_NCCL_BLOCKING_WAIT": "0",
    "NCCL_DEBUG": "WARN",
    "LOGLEVEL": "INFO",
}


class LaunchError(ValueError):
    """The requested ranks and nodes do not fit the allocation; the message says what to change."""


@dataclass(frozen=True)
class Allocation:
    """What a SLURM job holds: its nodes in order, each node's CPUs and GPUs, and how often it was requeued."""

    job_id: str
    nodes: tuple[str, ...]
    cpus: tuple[int, ...]
    gpus: tuple[int, ...]
    restarts: int = 0


def slurm_hostnames(nodelist: str) -> list[str]:
    """The host names of a SLURM node list (``node[01-02]`` -> node01, node02), as ``scontrol`` expands them."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _count(ids: str) -> int:
    """How many ids a list such as ``0-3,8,10-11`` names."""
    return sum(int(b) - int(a) + 1 if b else 1 for a, b in re.findall(r"(\d+)(?:-(\d+))?", ids))


def parse_job(text: str, hostnames: Callable[[str], list[str]] = slurm_hostnames) -> Allocation:
    """The allocation that ``scontrol show job -d`` describes in ``text``: one ``Nodes=... CPU_IDs=... GRES=...``
    line per group of nodes with the same share of the job."""
    job = re.search(r"\bJobId=(\S+)", text)
    nodelist = re.search(r"^\s*NodeList=(\S+)", text, flags=re.MULTILINE)
    if not job or not nodelist:
        raise LaunchError(f"cannot read the job's id and node list from `scontrol show job -d`:\n{text}")
    share: dict[str, tuple[int, int]] = {}
    for nodes, cpu_ids, rest in re.findall(r"^\s*Nodes=(\S+) CPU_IDs=(\S+)(.*)$", text, flags=re.MULTILINE):
        gres = re.search(r"\bGRES=(\S*)", rest)
        gpus = sum(int(n) for n in re.findall(r"\bgpu(?::[\w.-]+)?:(\d+)", gres[1] if gres else ""))
        share.update(dict.fromkeys(hostnames(nodes), (_count(cpu_ids), gpus)))
    hosts = hostnames(nodelist[1])
    missing = [h for h in hosts if h not in share]
    if missing:
        raise LaunchError(f"`scontrol show job -d` names no CPUs for {', '.join(missing)}:\n{text}")
    restarts = re.search(r"\bRestarts=(\d+)", text)
    return Allocation(job[1], tuple(hosts), tuple(share[h][0] for h in hosts), tuple(share[h][1] for h in hosts),
                      int(restarts[1]) if restarts else 0)


def slurm_allocation(job_id: str) -> Allocation:
    """The allocation of SLURM job ``job_id``, from ``scontrol show job -d``."""
    cmd = ["scontrol", "show", "job", "-d", job_id]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"`{' '.join(cmd)}` failed ({e}): the launcher reads the job's nodes and CPUs from it; "
                          f"run inside the SLURM job with scontrol on PATH, or unset SLURM_JOB_ID") from e
    if out.returncode != 0:
        raise LaunchError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}; the launcher reads the job's nodes and "
                          f"CPUs from it (is SLURM_JOB_ID={job_id} this job's id?)")
    return parse_job(out.stdout)


def check_allocation(alloc: Allocation, nproc: int, nnodes: int) -> list[str]:
    """Raise ``LaunchError`` where ``nproc`` ranks on each of ``nnodes`` nodes do not fit ``alloc``; return warnings
    for what fits but leaves GPUs or nodes idle."""
    job, held = f"SLURM job {alloc.job_id}", len(alloc.nodes)
    total = sum(alloc.gpus)
    if total and total % nnodes:
        fits = [n for n in range(1, held + 1) if total % n == 0]
        raise LaunchError(f"--nnodes {nnodes} does not divide the {total} GPUs of {job} ({held} node(s): "
                          f"{'+'.join(map(str, alloc.gpus))}): use --nnodes {' or '.join(map(str, fits))}, or "
                          f"submit with a GPU count per node times {nnodes} nodes")
    if nnodes > held:
        raise LaunchError(f"--nnodes {nnodes} but {job} holds {held} node(s) ({', '.join(alloc.nodes)}): submit "
                          f"it with --nodes={nnodes} (the config's resources: nodes: {nnodes}) or use --nnodes {held}")
    warnings = []
    if total:
        short = [f"{n} has {g}" for n, g in zip(alloc.nodes[:nnodes], alloc.gpus[:nnodes], strict=True) if g < nproc]
        if short:
            raise LaunchError(f"--nproc {nproc} ranks per node, one GPU each, but in {job} {', '.join(short)} "
                              f"GPU(s): ask for gpu: {nproc} per node or use --nproc {min(alloc.gpus[:nnodes])}")
        if max(alloc.gpus[:nnodes]) > nproc:
            warnings.append(f"{job} holds {'+'.join(map(str, alloc.gpus))} GPUs; {nproc} rank(s) per node leave "
                            f"some idle")
    if held > nnodes:
        warnings.append(f"{job} holds {held} nodes; --nnodes {nnodes} leaves {held - nnodes} idle")
    return warnings


def rendezvous(alloc: Allocation, env: Mapping[str, str]) -> list[str]:
    """torchrun's c10d rendezvous on the first node, under an id and port of this job and restart count."""
    digits = re.match(r"\d+", alloc.job_id)
    number = int(digits[0]) if digits else sum(map(ord, alloc.job_id))
    port = env.get("MASTER_PORT") or str(20000 + 4 * (number % 2500) + alloc.restarts % 4)
    return ["--rdzv-backend=c10d", f"--rdzv-endpoint={alloc.nodes[0]}:{port}",
            f"--rdzv-id={alloc.job_id}-{alloc.restarts}"]


def rank_environment(env: Mapping[str, str], cpus_per_node: int, nproc: int) -> list[str]:
    """The ``NAME=value`` settings every rank gets from a launcher whose environment is ``env``: threads per rank
    (``cpus_per_node // nproc``, at most ``env``'s OMP_NUM_THREADS) and each of ``RANK_DEFAULTS`` that ``env`` does
    not set itself."""
    threads = max(1, cpus_per_node // nproc)
    cap = env.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    return [f"OMP_NUM_THREADS={threads}", *(f"{k}={v}" for k, v in RANK_DEFAULTS.items() if k not in env)]


def per_node_srun(nnodes: int, cpus_per_task: int | None = None) -> list[str]:
    """``srun`` options that start one task on each of ``nnodes`` nodes of the current SLURM job, with
    ``cpus_per_task`` CPUs bound to it where given (see the module's notes)."""
    cpus = [f"--cpus-per-task={cpus_per_task}", f"--cpu-bind={CPU_BIND}"] if cpus_per_task else []
    return ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1", *cpus,
            "--kill-on-bad-exit=1", "--label"]


def torchrun_command(nproc: int, nnodes: int, argv: list[str], env: Mapping[str, str] | None = None,
                     allocation: Callable[[str], Allocation] = slurm_allocation) -> list[str]:
    """The command that runs ``python -m sidrepro.cli ARGV`` as ``nproc`` ranks on each of ``nnodes`` nodes, with
    each rank's environment set by ``env`` (the launcher's, by default) as the module's notes say. Raises
    ``LaunchError`` when the counts do not fit the SLURM job's allocation (read by ``allocation(job id)``)."""
    env = os.environ if env is None else env
    if nproc < 1 or nnodes < 1:
        raise LaunchError(f"--nproc and --nnodes count ranks per node and nodes: got {nproc} and {nnodes}")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
                "--max-restarts=0", "--monitor-interval=1", f"--signals-to-handle={SIGNALS}"]
    ranks = ["-m", "sidrepro.cli", *argv]
    if "SLURM_JOB_ID" not in env:
        settings = ["env", *rank_environment(env, len(os.sched_getaffinity(0)), nproc)]
        if nnodes == 1:
            return [*settings, *torchrun, "--standalone", *ranks]
        endpoint = f"{env.get('MASTER_ADDR', 'localhost')}:{env.get('MASTER_PORT', DEFAULT_PORT)}"
        return [*settings, *torchrun, "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", *ranks]
    alloc = allocation(env["SLURM_JOB_ID"])
    for warning in check_allocation(alloc, nproc, nnodes):
        print(f"sidrepro distill: warning: {warning}", file=sys.stderr)
    cpus = min(alloc.cpus[:nnodes])
    job_nodes = ["env", f"SLURM_JOB_NODELIST={','.join(alloc.nodes)}"]
    return [*job_nodes, *per_node_srun(nnodes, cpus), "env", *rank_environment(env, cpus, nproc), *torchrun,
            *rendezvous(alloc, env), *ranks]

"""The launch command of `sidrepro distill --nproc N --nnodes M` (sidrepro/commands/launch.py), from given SLURM
allocations: one srun task per node with its CPUs bound, threads per rank, the rank environment, a rendezvous per job
and restart, and named errors for counts that do not fit. The real two-node run is tests/test_slurm_multinode.py."""

from __future__ import annotations

import os
import sys

import pytest

from sidrepro.commands.launch import (
    RANK_DEFAULTS,
    Allocation,
    LaunchError,
    check_allocation,
    parse_job,
    per_node_srun,
    slurm_allocation,
    torchrun_command,
)

AGENT = [sys.executable, "-m", "torch.distributed.run"]
AGENT_OPTIONS = ["--max-restarts=0", "--monitor-interval=1",
                 "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]
DEFAULTS = [f"{k}={v}" for k, v in RANK_DEFAULTS.items()]

# `scontrol show job -d` of a real job on the two-node test cluster (sbatch --nodes=2 --gres=gpu:1 --exclusive),
# shortened to the lines that matter.
TEST_CLUSTER_JOB = """\
JobId=17 JobName=job2.sh
   JobState=RUNNING Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   NodeList=node[1-2]
   BatchHost=node1
   NumNodes=2 NumCPUs=4 NumTasks=2 CPUs/Task=1 ReqB:S:C:T=0:0:*:*
   TRES=cpu=4,node=2,billing=4,gres/gpu=4
   JOB_GRES=gpu:4
     Nodes=node[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:2(IDX:0-1)
   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0
   TresPerNode=gres:gpu:1
"""
# A requeued job on two nodes that share it differently: typed GPUs, hyper-threads listed as CPU ids.
UNEVEN_JOB = """\
JobId=4242 JobName=distill
   Requeue=1 Restarts=2 BatchFlag=1 Reboot=0 ExitCode=0:0
   NodeList=gpu[07-08]
     Nodes=gpu07 CPU_IDs=0-63 Mem=512000 GRES=gpu:h100:8(IDX:0-7)
     Nodes=gpu08 CPU_IDs=0-15,64-79 Mem=512000 GRES=gpu:h100:4(IDX:0-3)
"""
CPU_ONLY_JOB = """\
JobId=9 JobName=cpu
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   NodeList=node[1-2]
     Nodes=node[1-2] CPU_IDs=0-1 Mem=0 GRES=
"""
HOSTS = {"node[1-2]": ["node1", "node2"], "gpu[07-08]": ["gpu07", "gpu08"], "gpu07": ["gpu07"], "gpu08": ["gpu08"]}


def _job(text: str) -> Allocation:
    return parse_job(text, hostnames=HOSTS.__getitem__)


def two_nodes(gpus: int = 8, cpus: int = 64, restarts: int = 0, job: str = "4242") -> Allocation:
    return Allocation(job, ("gpu07", "gpu08"), (cpus, cpus), (gpus, gpus), restarts)


def _launch(nproc: int, nnodes: int, alloc: Allocation, **env: str) -> list[str]:
    return torchrun_command(nproc, nnodes, ["distill"], env={"SLURM_JOB_ID": alloc.job_id, **env},
                            allocation=lambda job_id: alloc)


def _rank_env(cmd: list[str]) -> dict[str, str]:
    """The NAME=value settings of the `env` that starts torchrun."""
    start = len(cmd) - cmd[::-1].index("env")
    end = cmd.index(sys.executable)
    return dict(item.split("=", 1) for item in cmd[start:end])


def _option(cmd: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(f"{name}="))


# ---------------------------------------------------------------- reading the allocation

def test_allocation_is_read_from_scontrol_per_node():
    assert _job(TEST_CLUSTER_JOB) == Allocation("17", ("node1", "node2"), (2, 2), (2, 2), 0)
    assert _job(UNEVEN_JOB) == Allocation("4242", ("gpu07", "gpu08"), (64, 32), (8, 4), 2)
    assert _job(CPU_ONLY_JOB) == Allocation("9", ("node1", "node2"), (2, 2), (0, 0), 0)


def test_a_job_scontrol_does_not_know_is_named(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"  # a cluster's scontrol answering for a job id it does not know
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(LaunchError, match=r"Invalid job id specified.*SLURM_JOB_ID=123"):
        slurm_allocation("123")


def test_unreadable_scontrol_output_is_named():
    with pytest.raises(LaunchError, match="node list"):
        _job("JobId=3 JobName=x\n")
    with pytest.raises(LaunchError, match="no CPUs for gpu08"):
        _job("JobId=3\n   NodeList=gpu[07-08]\n     Nodes=gpu07 CPU_IDs=0-3 Mem=0 GRES=\n")


# ---------------------------------------------------------------- the command lines

def test_one_node_outside_slurm_is_standalone_torchrun_with_threads_per_rank():
    cpus = len(os.sched_getaffinity(0))
    cmd = torchrun_command(2, 1, ["distill", "--teacher", "t"], env={})
    assert cmd == ["env", f"OMP_NUM_THREADS={max(1, cpus // 2)}", *DEFAULTS, *AGENT, "--nproc-per-node=2",
                   "--nnodes=1", *AGENT_OPTIONS, "--standalone", "-m", "sidrepro.cli", "distill", "--teacher", "t"]


def test_two_node_slurm_job_runs_one_bound_torchrun_per_node_meeting_on_the_first():
    cmd = _launch(8, 2, two_nodes(), OMP_NUM_THREADS="16")  # the rule exports the node's CPUs as the cap
    assert cmd == ["env", "SLURM_JOB_NODELIST=gpu07,gpu08",
                   "srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=64",
                   "--cpu-bind=verbose,cores", "--kill-on-bad-exit=1", "--label",
                   "env", "OMP_NUM_THREADS=8", *DEFAULTS,
                   *AGENT, "--nproc-per-node=8", "--nnodes=2", *AGENT_OPTIONS,
                   "--rdzv-backend=c10d", "--rdzv-endpoint=gpu07:26968", "--rdzv-id=4242-0",
                   "-m", "sidrepro.cli", "distill"]


def test_one_node_in_slurm_takes_the_same_path():
    cmd = _launch(8, 1, Allocation("77", ("gpu07",), (32,), (8,)))
    assert cmd[:11] == ["env", "SLURM_JOB_NODELIST=gpu07", "srun", "--overlap", "--nodes=1", "--ntasks=1",
                        "--ntasks-per-node=1", "--cpus-per-task=32", "--cpu-bind=verbose,cores", "--kill-on-bad-exit=1",
                        "--label"]
    assert _rank_env(cmd)["OMP_NUM_THREADS"] == "4"
    assert "--nnodes=1" in cmd and "--rdzv-endpoint=gpu07:20308" in cmd and "--standalone" not in cmd


@pytest.mark.parametrize(("cap", "threads"), [(None, "8"), ("16", "8"), ("4", "4"), ("1", "1"), ("x", "8")])
def test_threads_per_rank_are_the_node_cpus_over_its_ranks_at_most_the_launchers_setting(cap, threads):
    env = {} if cap is None else {"OMP_NUM_THREADS": cap}
    assert _rank_env(_launch(8, 2, two_nodes(cpus=64), **env))["OMP_NUM_THREADS"] == threads


def test_nodes_with_different_cpu_counts_bind_the_smaller():
    cmd = _launch(4, 2, _job(UNEVEN_JOB))
    assert "--cpus-per-task=32" in cmd and _rank_env(cmd)["OMP_NUM_THREADS"] == "8"


def test_rank_settings_are_defaults_the_environment_overrides():
    settings = _rank_env(_launch(8, 2, two_nodes()))
    assert settings["SIDREPRO_PG_TIMEOUT_S"] == "3600" and settings["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert settings["NCCL_DEBUG"] == "WARN" and settings["TORCH_NCCL_BLOCKING_WAIT"] == "0"
    mine = _rank_env(_launch(8, 2, two_nodes(), NCCL_DEBUG="INFO", SIDREPRO_PG_TIMEOUT_S="7200"))
    assert "NCCL_DEBUG" not in mine and "SIDREPRO_PG_TIMEOUT_S" not in mine  # inherited from the environment


def test_a_requeued_job_meets_under_a_new_id_and_port():
    first, requeued = _launch(8, 2, two_nodes(restarts=0)), _launch(8, 2, two_nodes(restarts=1))
    assert _option(first, "--rdzv-id") == "4242-0" and _option(requeued, "--rdzv-id") == "4242-1"
    assert _option(first, "--rdzv-endpoint") != _option(requeued, "--rdzv-endpoint")
    assert _option(first, "--rdzv-endpoint") == _option(_launch(8, 2, two_nodes(restarts=0)), "--rdzv-endpoint")
    neighbour = _launch(8, 2, two_nodes(job="4243"))  # the next job sharing the first node
    assert _option(first, "--rdzv-endpoint") != _option(neighbour, "--rdzv-endpoint")
    ports = {int(_option(_launch(1, 1, two_nodes(job=str(j), restarts=r)), "--rdzv-endpoint").split(":")[1])
             for j in range(0, 5000, 7) for r in range(4)}
    assert min(ports) >= 20000 and max(ports) < 30000  # below the kernel's ephemeral ports
    assert _option(_launch(8, 2, two_nodes(), MASTER_PORT="29611"), "--rdzv-endpoint") == "gpu07:29611"


def test_multi_node_outside_slurm_meets_at_master_addr():
    cmd = torchrun_command(4, 2, [], env={"MASTER_ADDR": "10.0.0.1"})
    assert "--rdzv-endpoint=10.0.0.1:29500" in cmd and "srun" not in cmd and "--nnodes=2" in cmd


def test_per_node_srun_without_cpus_binds_nothing():
    assert per_node_srun(1) == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1",
                                "--kill-on-bad-exit=1", "--label"]


# ---------------------------------------------------------------- counts that do not fit

def test_a_node_count_that_does_not_divide_the_gpus_is_refused():
    with pytest.raises(LaunchError, match=r"--nnodes 3 does not divide the 16 GPUs of SLURM job 4242 "
                                          r"\(2 node\(s\): 8\+8\): use --nnodes 1 or 2"):
        _launch(8, 3, two_nodes())


def test_more_nodes_than_the_allocation_fails_instead_of_waiting():
    with pytest.raises(LaunchError, match=r"--nnodes 4 but SLURM job 4242 holds 2 node\(s\) \(gpu07, gpu08\): "
                                          r"submit it with --nodes=4"):
        _launch(4, 4, two_nodes())
    with pytest.raises(LaunchError, match="--nnodes 3 but SLURM job 9 holds 2 node"):  # no GPUs to divide
        _launch(1, 3, _job(CPU_ONLY_JOB))


def test_more_ranks_than_a_nodes_gpus_is_refused():
    with pytest.raises(LaunchError, match=r"--nproc 8 ranks per node.* gpu08 has 4 GPU\(s\).*--nproc 4"):
        _launch(8, 2, _job(UNEVEN_JOB))
    with pytest.raises(LaunchError, match="got 0 and 2"):
        _launch(0, 2, two_nodes())


def test_idle_gpus_and_nodes_are_warned_about():
    assert check_allocation(two_nodes(), 8, 2) == []
    warnings = check_allocation(two_nodes(), 4, 1)
    assert any("leave some idle" in w for w in warnings) and any("leaves 1 idle" in w for w in warnings)

"""A throw-away SLURM cluster for tests: Debian's slurm-wlm 22.05, munge, and slurmdbd on a private mariadb.

Every file (configs, munge key, spool, state, database, logs) lives in a folder of the caller's; daemons run in the
foreground as our own children and are stopped by pid. Each node declares two fake GPUs backed by character devices
(clones of /dev/null): jobs asking for GPUs schedule and accounting records ``gres/gpu`` without real hardware. Needs
root (daemons run as root, no systemd) and apt for the packages.

One node (the default): slurmd runs on this machine under its host name, everything on 127.0.0.1, nothing outside the
folder touched. Several nodes: each slurmd runs in a network namespace of its own (tests/node_network.py) as
``node1``, ``node2``, ... with its own address, spool folder, pid file and log; slurmctld listens on the host's
bridge address. A job step on ``node2`` runs in node2's namespace, so its traffic to node1 crosses the veth links.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from node_network import node_network

PACKAGES = ["slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "mariadb-server"]
DAEMONS = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sbatch", "sacct",
           "sacctmgr", "sinfo", "scontrol"]
NUM_GPUS = 2
CLUSTER = "sidrepro"
PARTITION = "debug"


@dataclass
class Cluster:
    """A running cluster: ``env`` points SLURM clients (sbatch, sacct, Snakemake's plugin) at it. ``node`` is the
    first node's name; ``addresses`` maps every node's name to the address its slurmd and jobs use, and with several
    nodes ``namespaces`` to its network namespace (``ip netns pids`` lists what runs on the node)."""

    folder: Path
    node: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        """Every node's name, in order."""
        return list(self.addresses)

    def run(self, *cmd: str, timeout: float = 30) -> str:
        """A SLURM client command against this cluster; its stdout (raises on failure)."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=True).stdout

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.folder / "log").glob("*.log")))


def ensure_packages() -> None:
    """Install the Debian packages when a binary is missing; skip the test where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a SLURM test cluster needs root (its daemons run as root without systemd)")
    if all(shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") for b in DAEMONS):
        return
    if not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        pytest.skip("SLURM packages missing and this is not a Debian system with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    for cmd in ([], ["apt-get", "update", "-q"]):  # the package lists may be stale or absent: update once, retry
        if cmd:
            subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode == 0:
            return
    pytest.skip(f"apt-get could not install {' '.join(PACKAGES)}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait(what: str, check, timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}\n{cluster.logs()}")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if check():
                return
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}")


def _write_configs(folder: Path, ctld: tuple[str, str], nodes: dict[str, str], ports: dict[str, int]) -> None:
    """slurm.conf, gres.conf and slurmdbd.conf: slurmctld ``ctld`` = (name, address), ``nodes`` = {name: address}."""
    for sub in ("log", "state", "spool", "db", "munge", "dev", "run", *(f"spool/{n}" for n in nodes if len(nodes) > 1)):
        (folder / sub).mkdir(mode=0o700, exist_ok=True)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for i in range(NUM_GPUS):  # fake GPUs: character devices with /dev/null's numbers
        os.mknod(folder / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(1, 3))
    hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    hardware = " ".join(w for w in hardware.split() if not w.startswith("NodeName="))
    auth = f"AuthType=auth/munge\nAuthInfo=socket={folder}/munge/munge.socket\n"
    # Several slurmd on one file system: %n (the node name) keeps their spool, pid and log files apart.
    per_node = "-%n" if len(nodes) > 1 else ""
    task_plugin = "task/affinity" if len(nodes) > 1 else "task/none"
    bind_note = "; bind tasks to their CPUs (sched_setaffinity)." if len(nodes) > 1 else ", bind nothing."
    (folder / "slurm.conf").write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={ctld[0]}({ctld[1]})
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
{auth}SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool{per_node.replace('-', '/')}
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd{per_node}.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd{per_node}.log
# No cgroups in a container: track processes by parent id{bind_note}
ProctrackType=proctrack/linuxproc
TaskPlugin={task_plugin}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
InactiveLimit=0
KillWait=5
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
# Clients reach slurmdbd with this munge socket (AuthInfo covers slurmctld only).
AccountingStoragePass={folder}/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
""" + "".join(f"NodeName={name} NodeAddr={addr} {hardware} Gres=gpu:{NUM_GPUS} State=UNKNOWN\n"
              for name, addr in nodes.items())
        + f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")
    (folder / "gres.conf").write_text("".join(f"NodeName={name} Name=gpu File={folder}/dev/nvidia[0-{NUM_GPUS - 1}]\n"
                                              for name in nodes))
    dbd = folder / "slurmdbd.conf"
    dbd.write_text(f"""\
{auth}DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
PidFile={folder}/run/slurmdbd.pid
LogFile={folder}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['db']}
StorageUser=root
StorageLoc=slurm_acct_db
""")
    dbd.chmod(0o600)  # slurmdbd refuses a readable config (it may hold the database password)


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the test process dies, even by SIGKILL (a `timeout -s KILL` run)."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _start(cluster: Cluster, name: str, *cmd: str) -> None:
    log = open(cluster.folder / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the daemon keeps it open)
    cluster.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
                                           start_new_session=True, preexec_fn=_die_with_parent)


def _stop(cluster: Cluster) -> None:
    with contextlib.suppress(Exception):  # jobs' slurmstepd processes are not our children: cancel them first
        cluster.run("scancel", "--full", f"--partition={PARTITION}", timeout=10)
        time.sleep(1)
    slurmds = [name for name in cluster.procs if name.startswith("slurmd-") or name == "slurmd"]
    for name in (*slurmds, "slurmctld", "slurmdbd", "mariadbd", "munged"):
        proc = cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def slurm_cluster(folder: Path, nodes: int = 1) -> Iterator[Cluster]:
    """Start munged, mariadb, slurmdbd, slurmctld and ``nodes`` slurmd with their files in ``folder``; stop them
    on exit.

    Skips the calling test when not root or the packages cannot be installed. Yields once ``sinfo`` shows every node
    idle; daemons are stopped by pid at exit, also when the body raises, and with several nodes their namespaces,
    links and hosts files are removed with every process left in them.
    """
    ensure_packages()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # munged refuses group- or world-writable folders on its paths
    host = socket.gethostname().split(".")[0]
    ports = dict(zip(("ctld", "slurmd", "dbd", "db"), _free_ports(4), strict=True))
    with contextlib.ExitStack() as stack:
        if nodes == 1:
            net, ctld, addresses = None, (host, "127.0.0.1"), {host: "127.0.0.1"}
        else:
            net = stack.enter_context(node_network([f"node{i + 1}" for i in range(nodes)], host))
            ctld, addresses = (host, net.host_address), net.addresses
        _write_configs(folder, ctld, addresses, ports)
        # Snakemake's job step drops every SLURM_* variable, SLURM_CONF included, before it calls srun; real
        # clusters keep slurm.conf where srun finds it without one. An srun on PATH that sets it stands in for
        # /etc/slurm.
        (folder / "bin").mkdir(exist_ok=True)
        srun = folder / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={folder}/slurm.conf\nexec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)
        path = f"{folder}/bin:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
        env = {**os.environ, "PATH": path, "SLURM_CONF": str(folder / "slurm.conf")}
        cluster = Cluster(folder, next(iter(addresses)), env, addresses=addresses,
                          namespaces=net.namespaces if net else {})
        try:
            _start_controller(cluster, ports)
            if net is None:
                _start(cluster, "slurmd", "slurmd", "-D")
            else:
                for name in addresses:
                    _start(cluster, f"slurmd-{name}", *net.on_node(name, "slurmd", "-D", "-N", name))
            _wait("idle nodes", lambda: cluster.run("sinfo", "-h", "-N", "-o", "%T", timeout=10).split()
                  == ["idle"] * nodes, 90, cluster)
            yield cluster
        finally:
            _stop(cluster)


def _start_controller(cluster: Cluster, ports: dict[str, int]) -> None:
    """munged, a private mariadb, slurmdbd (with the cluster registered) and slurmctld."""
    folder = cluster.folder
    _start(cluster, "munged", "munged", "-F", "--force", f"--key-file={folder}/munge/munge.key",
           f"--socket={folder}/munge/munge.socket", f"--pid-file={folder}/run/munged.pid",
           f"--log-file={folder}/log/munged.log", f"--seed-file={folder}/munge/munge.seed")
    db = folder / "db"
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={db}", "--user=root",
                    "--skip-test-db", "--auth-root-authentication-method=normal"],
                   capture_output=True, check=True, timeout=120)
    # No grant tables: a private database on a loopback port needs no users or passwords.
    _start(cluster, "mariadbd", "mariadbd", "--no-defaults", f"--datadir={db}", "--user=root",
           f"--socket={folder}/run/mysqld.sock", f"--port={ports['db']}", "--bind-address=127.0.0.1",
           "--skip-grant-tables", f"--pid-file={folder}/run/mariadbd.pid",
           f"--log-error={folder}/log/mariadbd.log")
    _wait("mariadb", lambda: socket.create_connection(("127.0.0.1", ports["db"]), 1).close() is None, 60,
          cluster)
    _start(cluster, "slurmdbd", "slurmdbd", "-D")
    _wait("slurmdbd", lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], env=cluster.env,
                                             capture_output=True, timeout=10).returncode == 0, 60, cluster)
    cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
    _start(cluster, "slurmctld", "slurmctld", "-D", "-i")

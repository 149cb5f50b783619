"""Network namespaces that stand in for the nodes of a test cluster on one machine.

Each node gets its own network namespace (``ip netns``), joined to a bridge on the host by a veth pair, with its own
address on a private /24; the host keeps the bridge's first address, so daemons on the host are reachable from every
node. A node's ``/etc/hosts`` (``/etc/netns/<namespace>/hosts``, mounted over ``/etc/hosts`` as ``ip netns exec``
does) maps every node name to its address, and each command on a node runs in its own UTS namespace whose host name
is the node's name: name resolution, ``hostname`` and the addresses torch and gloo pick are those of that node, as
on a real cluster. Needs root. Names carry this process's id, so a run killed before its cleanup is removed by the
next one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sidrepro"
NETNS_ETC = Path("/etc/netns")


@dataclass
class NodeNetwork:
    """The namespaces of a set of nodes: ``addresses[node]`` is the node's address, ``host_address`` the host's."""

    host_address: str
    addresses: dict[str, str]
    namespaces: dict[str, str]

    def on_node(self, node: str, *cmd: str) -> list[str]:
        """``cmd`` as run on ``node``: in its network namespace, with its hosts file, in a UTS namespace named after
        it. (Not ``ip netns exec``: it mounts a fresh /sys without /sys/fs/cgroup, and slurmd needs the cgroups.)"""
        ns = self.namespaces[node]
        return ["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "--mount", "--uts", "--", "sh", "-c",
                f'mount --bind {NETNS_ETC / ns / "hosts"} /etc/hosts && hostname "$0" && exec "$@"', node, *cmd]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _names(pid: int) -> tuple[str, str]:
    """This process's bridge and its prefix of veth names (interface names hold at most 15 characters)."""
    return f"srb{pid}", f"sr{pid}h"


def _free_subnet(pid: int) -> str:
    used = _ip("-o", "-4", "addr").stdout
    for i in range(254):
        third = (pid + i) % 254 + 1
        if f" 10.213.{third}." not in used:
            return f"10.213.{third}"
    raise RuntimeError("no free 10.213.x.0/24 subnet for the test nodes")


def _remove(pid: int) -> None:
    """Everything made for process ``pid``: processes left in its namespaces, the namespaces, links, hosts files."""
    bridge, veth = _names(pid)
    for ns in _ip("netns", "list").stdout.split():
        if not ns.startswith(f"{PREFIX}-{pid}-"):
            continue
        # Job steps daemonise away from slurmd; in a namespace of our own every process is one of ours.
        for p in _ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(p), 9)
        _ip("netns", "del", ns, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    for link in re.findall(rf"^\d+: ({veth}\d+)[@:]", _ip("-o", "link").stdout, flags=re.MULTILINE):
        _ip("link", "del", link, check=False)
    _ip("link", "del", bridge, check=False)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: someone else's namespaces keep their files


def _remove_stale() -> None:
    """Remove what runs that were killed before their cleanup left (their process is gone)."""
    for ns in _ip("netns", "list").stdout.split():
        m = re.fullmatch(rf"{PREFIX}-(\d+)-.+", ns)
        if not m or int(m[1]) == os.getpid():
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:
            _remove(int(m[1]))


@contextlib.contextmanager
def node_network(nodes: list[str], host_name: str) -> Iterator[NodeNetwork]:
    """Namespaces for ``nodes`` on a fresh bridge (``host_name`` resolves to the host's bridge address on every
    node); all of it, and every process left inside, is removed on exit, also when the body raises."""
    _remove_stale()
    pid = os.getpid()
    bridge, veth = _names(pid)
    subnet = _free_subnet(pid)
    net = NodeNetwork(f"{subnet}.1", {n: f"{subnet}.{i + 2}" for i, n in enumerate(nodes)},
                      {n: f"{PREFIX}-{pid}-{n}" for n in nodes})
    hosts = "".join(f"{a} {n}\n" for n, a in [(host_name, net.host_address), *net.addresses.items()])
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net.host_address}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, node in enumerate(nodes):
            ns, host_end, node_end = net.namespaces[node], f"{veth}{i}", f"sr{pid}n{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
            _ip("link", "set", host_end, "master", bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", node_end, "netns", ns)
            for args in (["addr", "add", f"{net.addresses[node]}/24", "dev", node_end],
                         ["link", "set", node_end, "up"], ["link", "set", "lo", "up"]):
                _ip("netns", "exec", ns, "ip", *args)
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}")
        yield net
    finally:
        _remove(pid)

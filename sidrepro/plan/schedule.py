"""Critical path and wall time of a job graph on N nodes of G GPUs.

The model:
- a job needs ``gpus`` GPUs on each of its ``nodes`` nodes for ``hours``; distillation takes whole nodes (the SLURM
  profile submits it ``--exclusive``), every other GPU job shares a node's free GPUs;
- jobs that ask for no GPU run beside the GPU jobs without waiting for them (CPU partitions or the login node),
  except that jobs holding the download slot (``hub``) run one at a time, as the profiles' ``hub=1`` makes them;
- critical path: the longest chain of dependent jobs with unlimited nodes (no schedule can be shorter);
- wall time on N nodes: a list schedule (whenever a job ends, start the ready jobs that fit, those with the longest
  remaining chain below them first: Hu's/HLFET priority; a job that fits starts even while a higher one waits for
  whole nodes, i.e. backfilling without reservations), taken as the best of the schedules on n..N nodes (n: the most
  any job needs), because a greedy list schedule can get slower with more machines (Graham's anomalies) while a real
  run could always leave nodes idle. Queue waits, failures and restarts are not modelled.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A job as the scheduler sees it."""

    key: str
    hours: float
    gpus: int  # per node
    nodes: int
    exclusive: bool  # takes whole nodes
    hub: bool
    deps: tuple[str, ...]


def check_fits(tasks: list[Task], nodes: int, gpus_per_node: int) -> None:
    """A named error for a job the cluster cannot run at all."""
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")
    if gpus_per_node < 1:
        raise ValueError(f"gpus per node must be at least 1, got {gpus_per_node}")
    for t in tasks:
        if t.gpus > gpus_per_node:
            raise ValueError(f"job {t.key} asks for {t.gpus} GPUs per node but nodes have {gpus_per_node} "
                             "(--gpus-per-node): change the config's resources or the node size")
        if t.gpus and t.nodes > nodes:
            raise ValueError(f"job {t.key} needs {t.nodes} nodes but the plan has {nodes} (--nodes): "
                             f"plan with --nodes {t.nodes} or more")


def bottom_levels(tasks: list[Task]) -> dict[str, float]:
    """Hours from each job's start to the end of the longest chain that follows it, the job included
    (``tasks`` dependencies first)."""
    below: dict[str, float] = {t.key: 0.0 for t in tasks}
    level: dict[str, float] = {}
    for t in reversed(tasks):
        level[t.key] = t.hours + below[t.key]
        for d in t.deps:
            below[d] = max(below[d], level[t.key])
    return level


def critical_path(tasks: list[Task]) -> tuple[float, list[str]]:
    """Length (hours) and jobs of the longest dependency chain (``tasks`` dependencies first)."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for t in tasks:
        prev = max(t.deps, key=finish.__getitem__, default=None)
        finish[t.key] = (finish[prev] if prev else 0.0) + t.hours
        via[t.key] = prev
    end = max(reversed(finish), key=finish.__getitem__)  # of equal chains, the one ending last (the target)
    chain = [end]
    while via[chain[-1]] is not None:
        chain.append(via[chain[-1]])
    return finish[end], chain[::-1]


def wall_time(tasks: list[Task], nodes: int, gpus_per_node: int) -> float:
    """Wall hours on up to ``nodes`` nodes: the best list schedule on n = (the most any job needs) .. ``nodes``."""
    check_fits(tasks, nodes, gpus_per_node)
    need = max((t.nodes for t in tasks if t.gpus), default=1)
    bound = critical_path(tasks)[0]
    best = float("inf")
    for n in range(need, nodes + 1):
        best = min(best, list_schedule(tasks, n, gpus_per_node))
        if best <= bound * (1 + 1e-9):  # no schedule beats the critical path: more nodes cannot help
            break
    return best


def list_schedule(tasks: list[Task], nodes: int, gpus_per_node: int) -> float:
    """Wall hours of the list schedule on exactly ``nodes`` nodes (see the module docstring)."""
    level = bottom_levels(tasks)
    by_key = {t.key: t for t in tasks}
    waiting = {t.key: len(set(t.deps)) for t in tasks}
    users: dict[str, list[str]] = {t.key: [] for t in tasks}
    for t in tasks:
        for d in set(t.deps):
            users[d].append(t.key)
    free = [gpus_per_node] * nodes
    gpu_ready: list[tuple[float, str]] = []
    hub_ready: list[tuple[float, str]] = []
    running: list[tuple[float, str, list[int]]] = []
    now, hub_busy = 0.0, False

    def release(key: str) -> None:
        t = by_key[key]
        item = (-level[key], key)
        if t.gpus:
            heapq.heappush(gpu_ready, item)
        elif t.hub:
            heapq.heappush(hub_ready, item)
        else:
            heapq.heappush(running, (now + t.hours, key, []))

    for key, n in waiting.items():
        if n == 0:
            release(key)
    while gpu_ready or hub_ready or running:
        if hub_ready and not hub_busy:
            key = heapq.heappop(hub_ready)[1]
            hub_busy = True
            heapq.heappush(running, (now + by_key[key].hours, key, []))
        held = []
        while gpu_ready and any(free):
            item = heapq.heappop(gpu_ready)
            t = by_key[item[1]]
            taken = _place(t, free, gpus_per_node)
            if taken is None:
                held.append(item)
                continue
            for node in taken:
                free[node] -= gpus_per_node if t.exclusive else t.gpus
            heapq.heappush(running, (now + t.hours, t.key, taken))
        for item in held:
            heapq.heappush(gpu_ready, item)
        if not running:
            raise ValueError(f"job {gpu_ready[0][1]} can never start on {nodes} nodes of {gpus_per_node} GPUs")
        now, key, taken = heapq.heappop(running)
        t = by_key[key]
        for node in taken:
            free[node] += gpus_per_node if t.exclusive else t.gpus
        hub_busy = hub_busy and not t.hub
        for u in users[key]:
            waiting[u] -= 1
            if waiting[u] == 0:
                release(u)
    return now


def _place(t: Task, free: list[int], gpus_per_node: int) -> list[int] | None:
    """Nodes for ``t`` (whole idle nodes when exclusive, else the fullest nodes that still fit), or None."""
    want = gpus_per_node if t.exclusive else t.gpus
    fits = sorted((f, i) for i, f in enumerate(free) if f >= want)
    return [i for _, i in fits[:t.nodes]] if len(fits) >= t.nodes else None

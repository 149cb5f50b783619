"""Generator snapshots of a run: written every ``snapshot_ticks`` ticks and at the end, scored as the run trains by a
caller-supplied evaluator, and pruned to the ones a selection rule may still choose (``sidrepro.selection``).

A snapshot is a checkpoint folder holding the generator only (no fake network, no Adam state: a quarter of a
training checkpoint), under ``RUN/snapshots/checkpoints/``, so ``sidrepro export`` writes a student from it with the
same code as from a training checkpoint. The trainer knows nothing about FID: it hands the evaluator a
:class:`GeneratorView` (the live, possibly sharded generator and how to sample it) and records what comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..selection import SelectionError, SnapshotScore, append_score, keep_names, read_scores, snapshot_root
from ..teachers.base import TeacherAdapter
from .checkpoint import _delete, complete_checkpoints, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorView:
    """What an evaluator needs to sample the generator where it lives. Every rank gets one and must sample the same
    number of batches (a sharded generator's forward pass is a collective)."""

    nimg: int
    name: str  # the snapshot folder's name
    checkpoint: Path  # the snapshot's checkpoint folder (weights as written)
    adapter: TeacherAdapter
    net: nn.Module
    num_steps: int
    init_timestep: int
    noise: str
    resolution: int  # 0: the teacher's
    rank: int
    world: int
    folder: Path  # a scratch folder for this snapshot's samples, shared by all ranks


# Called on every rank; rank 0 returns the score, the others None.
Evaluator = Callable[[GeneratorView], "SnapshotScore | None"]


def record_and_prune(run: Path, score: SnapshotScore) -> list[str]:
    """Rank 0: append ``score`` to the run's snapshot metrics and delete the snapshots no rule can choose any more;
    returns the names deleted."""
    append_score(run, score)
    keep = keep_names(read_scores(run))
    gone = []
    for path in complete_checkpoints(snapshot_root(run)):
        if path.name not in keep:
            try:
                _delete(path)
                gone.append(path.name)
            except OSError as e:  # housekeeping: a snapshot left behind costs disk, not correctness
                log.warning("could not delete snapshot %s: %s", path, e)
    return gone


def snapshot_folder(run: Path, name: str) -> Path:
    """The snapshot checkpoint folder ``name`` of ``run`` (a ``SelectionError`` if it was pruned or never written)."""
    for path in complete_checkpoints(snapshot_root(run)):
        if path.name == name:
            return path
    raise SelectionError(f"snapshot {name} of {run} is not on disk (pruned, or the run folder moved); the kept ones: "
                         f"{', '.join(p.name for p in complete_checkpoints(snapshot_root(run))) or 'none'}")


def is_scored(run: Path, nimg: int) -> bool:
    """Whether ``run`` has a score for its snapshot at ``nimg`` (a stop may have left it to the next invocation)."""
    return any(s.nimg == nimg for s in read_scores(run))


def take_snapshot(run: Path, nimg: int, gen: nn.Module, state: dict, evaluate: Evaluator, *, adapter: TeacherAdapter,
                  num_steps: int, init_timestep: int, noise: str, resolution: int, rank: int, world: int
                  ) -> SnapshotScore | None:
    """Every rank: write the generator snapshot at ``nimg``, score it with ``evaluate``, and (rank 0) record the
    score and prune the snapshots no rule can choose any more. The samples are deleted once scored (their
    ``metrics.json`` stays in the snapshot's sample folder). Returns rank 0's score."""
    # Nothing is pruned by the save itself: which snapshots go is the selection's decision (record_and_prune).
    path = save_checkpoint(snapshot_root(run), nimg, models={"generator": gen}, optimizers={}, state=state,
                           keep=10**9, sharded=world > 1)
    view = GeneratorView(nimg=nimg, name=path.name, checkpoint=path, adapter=adapter, net=gen, num_steps=num_steps,
                         init_timestep=init_timestep, noise=noise, resolution=resolution, rank=rank, world=world,
                         folder=snapshot_root(run) / "samples" / path.name)
    score = evaluate(view)
    if rank == 0 and score is not None:
        score = dataclasses.replace(score, init_nimg=int(state.get("init_nimg", 0)))
        record_and_prune(run, score)
        for png in view.folder.glob("*.png"):  # thousands of images per snapshot: the numbers are what stays
            png.unlink()
        shutil.rmtree(view.folder / ".features", ignore_errors=True)
    if world > 1:
        torch.distributed.barrier()
    return score

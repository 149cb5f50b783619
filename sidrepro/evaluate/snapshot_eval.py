"""Scoring a generator snapshot while its run trains: every rank samples its share of a caption subset with the live
(possibly sharded) generator, through the same per-image seeds, PNG files and manifests as ``sidrepro sample``, and
rank 0 computes FID and CLIP under the protocol with ``evaluate_samples``. An exported snapshot sampled later by the
workflow draws the same latents and noise for the same captions.

Used by ``sidrepro distill --select-protocol``; the trainer sees only a callable (``distill.snapshots.Evaluator``).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch

from ..selection import SELECTION_SUBSETS, SnapshotScore, check_protocol
from .metrics import evaluate_samples
from .protocols import get_protocol
from .reference import CocoReference
from .sampling import ModelRecord, _StudentSampler, _weight_files, merge_manifests, model_hash, sample_shard


class _LiveSampler(_StudentSampler):
    """The student sampler over a generator held by the trainer (no folder is loaded)."""

    def __init__(self, view, record: ModelRecord):
        adapter = view.adapter
        if view.resolution and view.resolution != adapter.entry.resolution:  # a run trained off the preset size
            adapter = copy.copy(adapter)
            adapter.entry = dataclasses.replace(adapter.entry, resolution=view.resolution)
        self.adapter, self.net, self.record = adapter, view.net, record
        self.dtype = next(view.net.parameters()).dtype
        self.device = view.adapter.device
        self.num_steps = self.steps = view.num_steps
        self.meta = {"init_timestep": view.init_timestep, "noise": view.noise}


class SnapshotEvaluator:
    """``evaluator(view)`` on every rank: sample ``count`` captions of the protocol's selection subset (all of it by
    default) into ``view.folder`` and score them on rank 0, which returns the :class:`SnapshotScore`."""

    def __init__(self, reference: Path, protocol: str, *, count: int | None = None, batch: int = 8, seed: int = 0,
                 clip: tuple[str, str] | None = None, device: str | torch.device | None = None):
        self.protocol = get_protocol(check_protocol(protocol))
        self.subset = SELECTION_SUBSETS[protocol]
        self.reference, self.batch, self.seed, self.clip, self.device = Path(reference), batch, seed, clip, device
        captions = CocoReference.open(reference).load_subset(self.subset)
        self.captions = captions[:count] if count else captions
        self.num_images = len(self.captions)  # what the trainer plans a scoring's time with
        if len(self.captions) < 2:
            raise ValueError(f"subset {self.subset!r} of {reference} has {len(self.captions)} captions; scoring a "
                             "snapshot needs at least 2 (a tiny reference may leave the held-out subset empty: use "
                             "the paper protocol, or a larger reference)")

    def __call__(self, view) -> SnapshotScore | None:
        # Equal shares: every rank runs the same number of batches, as a sharded generator's collectives need.
        rows = self.captions[: len(self.captions) - len(self.captions) % view.world]
        if view.rank == 0 and view.folder.exists():  # an evaluation cut by a kill: start it afresh
            shutil.rmtree(view.folder)
        _barrier(view.world)
        record = ModelRecord("student", f"snapshot-{view.name}",
                             model_hash(_weight_files(view.checkpoint, "generator/")), view.name, view.num_steps,
                             None, view.resolution or view.adapter.entry.resolution,
                             str(next(view.net.parameters()).dtype).removeprefix("torch."))
        with torch.no_grad():
            sample_shard(_LiveSampler(view, record), rows, view.folder, shard=view.rank, num_shards=view.world,
                         seed=self.seed, batch=self.batch, resolution_out=self.protocol.image_size, progress=False)
        _barrier(view.world)
        if view.rank != 0:
            return None
        merge_manifests(view.folder)
        metrics = evaluate_samples(view.folder, self.reference, self.protocol.name, view.folder / "metrics.json",
                                   clip=self.clip, device=self.device, require_complete=False)
        return SnapshotScore(nimg=view.nimg, name=view.name, fid=float(metrics["fid"]),
                             clip=float(metrics["clip_score"]), subset=self.subset, protocol=self.protocol.name,
                             num_images=len(rows))


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()

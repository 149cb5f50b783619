"""Which generator snapshot of a run a table reports, and which snapshots are still worth keeping.

A distillation run writes a snapshot of its generator every ``snapshot_ticks`` ticks and at its end, and evaluates
each one as it trains (FID and CLIP on a caption subset of the COCO reference). One line per evaluated snapshot goes
to ``RUN/snapshots/metrics.jsonl``; a selection rule then names the snapshot that stands for the run:

- protocol ``paper`` (what the paper did): FID and CLIP on the 10k evaluation captions (``paper10k``), the cell from
  the best-FID snapshot; the best-CLIP one is kept too, as the official loop kept both.
- protocol ``clean``: selection on the ``heldout`` captions, which no reported subset contains, and the selected
  snapshot evaluated afterwards on the reported captions (``clean30k``): a number never chosen on the set it reports.

Snapshots that no rule can choose any more (neither the best by a kept rule nor the latest) are deleted as soon as a
better one is evaluated, so a run keeps at most three snapshots on disk. Torch-free: tables, provenance and
``sidrepro status`` read these files too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

SNAPSHOT_DIR = "snapshots"
METRICS_FILE = "metrics.jsonl"

# rule -> (metric, better): the rules a table cell may come from.
RULES: dict[str, tuple[str, str]] = {"best-fid": ("fid", "min"), "best-clip": ("clip", "max"), "last": ("nimg", "max")}
# protocol -> the caption subset snapshots are scored on while training.
SELECTION_SUBSETS: dict[str, str] = {"paper": "paper10k", "clean": "heldout"}
KEPT_RULES = ("best-fid", "best-clip", "last")  # snapshots chosen by any of these stay on disk


class SelectionError(ValueError):
    """An unknown rule or protocol, or a run without the evaluated snapshots a rule needs."""


@dataclass(frozen=True)
class SnapshotScore:
    """One evaluated snapshot: its image count, folder name, FID and CLIP on ``subset`` under ``protocol``."""

    nimg: int
    name: str
    fid: float
    clip: float
    subset: str
    protocol: str
    num_images: int
    init_nimg: int = 0  # images the generator saw before this run (a data-aided run continues a data-free one)

    @property
    def kimg(self) -> float:
        """Thousands of images the generator has seen, this run's and those before it."""
        return (self.nimg + self.init_nimg) / 1000


def check_rule(rule: str) -> str:
    """``rule`` if it is one of ``RULES``, else a ``SelectionError`` naming the valid ones."""
    if rule not in RULES:
        raise SelectionError(f"unknown selection rule {rule!r}; valid: {', '.join(RULES)}")
    return rule


def check_protocol(protocol: str) -> str:
    """``protocol`` if snapshots can be selected under it, else a ``SelectionError`` naming the valid ones."""
    if protocol not in SELECTION_SUBSETS:
        raise SelectionError(f"unknown selection protocol {protocol!r}; valid: {', '.join(SELECTION_SUBSETS)}")
    return protocol


def check_interval(snapshot_kimg: float, duration_kimg: float) -> None:
    """A snapshot interval longer than the run would leave one snapshot, the last: nothing to select from."""
    if snapshot_kimg > duration_kimg:
        raise SelectionError(
            f"the snapshot interval ({snapshot_kimg:g} kimg = snapshot_ticks x tick_kimg) is longer than the run "
            f"(duration_kimg={duration_kimg:g}); lower snapshot_ticks so that several snapshots are evaluated, or "
            "turn selection off")


def snapshot_root(run: Path) -> Path:
    return Path(run) / SNAPSHOT_DIR


def read_scores(run: Path) -> list[SnapshotScore]:
    """The evaluated snapshots of ``run`` in training order; a snapshot evaluated twice (a resumed run redid it)
    counts with its last evaluation."""
    path = snapshot_root(run) / METRICS_FILE
    if not path.is_file():
        return []
    by_nimg: dict[int, SnapshotScore] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_nimg[int(row["nimg"])] = SnapshotScore(**{k: row[k] for k in SnapshotScore.__dataclass_fields__
                                                         if k in row})
    return [by_nimg[n] for n in sorted(by_nimg)]


def append_score(run: Path, score: SnapshotScore) -> None:
    """Add one evaluated snapshot to ``run``'s metrics file (one JSON line, flushed to disk)."""
    path = snapshot_root(run) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(score)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def select(scores: Iterable[SnapshotScore], rule: str) -> SnapshotScore:
    """The snapshot ``rule`` chooses; ties go to the earlier snapshot. Non-finite metrics never win."""
    metric, better = RULES[check_rule(rule)]
    pool = [s for s in scores if math.isfinite(float(getattr(s, metric)))]
    if not pool:
        raise SelectionError(f"no evaluated snapshot with a finite {metric} to select by {rule!r}")
    key = (lambda s: (getattr(s, metric), s.nimg)) if better == "min" else (lambda s: (-getattr(s, metric), s.nimg))
    return min(pool, key=key)


def keep_names(scores: list[SnapshotScore], rules: Iterable[str] = KEPT_RULES) -> set[str]:
    """The snapshot folders some rule may still choose: the best so far by each rule, and the latest."""
    keep = set()
    for rule in rules:
        try:
            keep.add(select(scores, rule).name)
        except SelectionError:
            continue
    if scores:
        keep.add(scores[-1].name)
    return keep


def describe(chosen: SnapshotScore, rule: str, scores: list[SnapshotScore]) -> dict:
    """What a student records about its selection: the rule, the chosen snapshot, and the last snapshot's numbers
    beside it (a reader sees how much selection moved the cell)."""
    last = scores[-1]
    return {"rule": rule, "protocol": chosen.protocol, "subset": chosen.subset, "num_images": chosen.num_images,
            "candidates": len(scores), "snapshot": chosen.name, "kimg": chosen.kimg, "fid": chosen.fid,
            "clip": chosen.clip, "last": {"snapshot": last.name, "kimg": last.kimg, "fid": last.fid,
                                          "clip": last.clip}}

"""FID against training progress: each checkpoint's student sampled on a caption subset (the held-out one by
default, never a reported one) and scored against the protocol's reference statistics, written as a CSV and a plot.

Knows nothing of training: the caller hands in student folders (exported checkpoints) with their image counts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import write_atomic, write_text_atomic
from .fid import features_for_folder, fid_against_stats
from .metrics import reference_stats_for
from .protocols import get_protocol
from .reference import CocoReference, load_reference_stats
from .sampling import ModelSpec, merge_manifests, sample_shard

COLUMNS = ["checkpoint", "kimg", "num_images", "fid", "subset", "protocol"]


def student_fid(student: Path, reference: Path, samples: Path, *, protocol: str = "paper", subset: str = "heldout",
                count: int | None = None, batch: int = 8, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, progress: bool = False) -> float:
    """FID of ``student`` on the first ``count`` captions of ``subset`` (sampled into ``samples``, resumable) against
    the protocol's statistics of the whole reference."""
    prot = get_protocol(protocol)
    ref = CocoReference.open(reference)
    captions = ref.load_subset(subset)[:count] if count else ref.load_subset(subset)
    if len(captions) < 2:
        raise ValueError(f"subset {subset!r} of {reference} has {len(captions)} captions; FID needs at least 2 "
                         "(a tiny reference may leave the held-out subset empty: choose another subset)")
    sample_shard(ModelSpec.student(student), captions, samples, batch=batch, device=device, dtype=dtype,
                 progress=progress)
    merge_manifests(samples)
    ref_stats = load_reference_stats(reference_stats_for(ref, prot, device=device))
    feats = features_for_folder(samples, prot.fid_mode, device=device, cache=samples / ".features")
    return fid_against_stats(feats, ref_stats.mu, ref_stats.sigma)


def write_curve(rows: Sequence[dict], csv_path: Path, png_path: Path | None = None, *, title: str = "") -> None:
    """The rows as CSV (``COLUMNS``) and, if asked, FID against kimg as a PNG; both written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(csv_path, buf.getvalue())
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot([r["kimg"] for r in rows], [r["fid"] for r in rows], marker="o", lw=1)
    ax.set_xlabel("kimg")
    ax.set_ylabel(f"FID ({rows[0]['subset']}, {rows[0]['num_images']} images)" if rows else "FID")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)

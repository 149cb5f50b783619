"""FID against training progress: the scores a run gave its generator snapshots as it trained
(``RUN/snapshots/metrics.jsonl``, ``sidrepro.selection``), as a CSV and a plot with the selected snapshot marked.

Knows nothing of training: it reads the run's snapshot scores and draws them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_atomic, write_text_atomic
from ..selection import SelectionError, read_scores, select

COLUMNS = ["checkpoint", "kimg", "num_images", "fid", "clip", "subset", "protocol", "selected"]


def curve_rows(run: Path, rule: str) -> list[dict]:
    """One row per scored snapshot of ``run``, ``selected`` = 1 on the one ``rule`` chooses."""
    scores = read_scores(run)
    if not scores:
        raise SelectionError(f"{run} has no scored snapshots: train with `sidrepro distill --select-protocol ...`")
    chosen = select(scores, rule).name
    return [{"checkpoint": s.name, "kimg": s.kimg, "num_images": s.num_images, "fid": round(s.fid, 4),
             "clip": round(s.clip, 5), "subset": s.subset, "protocol": s.protocol, "selected": int(s.name == chosen)}
            for s in scores]


def write_curve(rows: Sequence[dict], csv_path: Path, png_path: Path | None = None, *, title: str = "") -> None:
    """The rows as CSV (``COLUMNS``; absent ones empty) and, if asked, FID against kimg as a PNG (the selected
    snapshot circled); both written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(csv_path, buf.getvalue())
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot([r["kimg"] for r in rows], [r["fid"] for r in rows], marker="o", lw=1)
    for r in rows:
        if r.get("selected"):
            ax.plot([r["kimg"]], [r["fid"]], marker="o", ms=12, mfc="none", mec="C3", label="selected")
            ax.legend(fontsize=8)
    ax.set_xlabel("kimg")
    ax.set_ylabel(f"FID ({rows[0]['subset']}, {rows[0]['num_images']} images)" if rows else "FID")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)

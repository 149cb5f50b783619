"""Pictures of a toy run: sample scatter plots (2-D worlds) and loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_scatter(path: Path, sets: dict[str, torch.Tensor], max_points: int = 4000) -> None:
    """One panel per sample set, on shared axes; the first set (the data) is drawn in grey behind the others."""
    names = list(sets)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, sharex=True, sharey=True)
    ref = sets[names[0]]
    lo, hi = ref.min(0).values - 0.5, ref.max(0).values + 0.5
    for ax, name in zip(axes.flat, names, strict=False):
        x = sets[name][:max_points]
        if name != names[0]:
            ax.scatter(ref[:max_points, 0], ref[:max_points, 1], s=1, alpha=0.15, color="0.6")
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="black" if name == names[0] else "tab:blue")
        ax.set_title(name, fontsize=8)
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    _save(fig, path)


def plot_losses(path: Path, teacher_losses: list[float], logs: dict[str, list[dict]]) -> None:
    """Teacher flow-matching loss and, per student, the running distance to the data (``energy_*`` keys) and the
    fake-score, generator and adversarial losses against images seen."""
    energy = sorted({k for log in logs.values() for r in log for k in r
                     if k.startswith("energy_") and k != "energy_teacher"})
    present = {k for log in logs.values() for r in log for k in r}
    keys = (*energy, *(k for k in ("loss_fake", "loss_sid", "loss_disc", "loss_adv") if k in present))
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(3.6 * (1 + len(keys)), 3.0))
    axes[0].plot(teacher_losses, lw=0.6)
    axes[0].set(title="teacher flow matching", xlabel="iteration", yscale="log")
    for ax, key in zip(axes[1:], keys, strict=True):
        for name, log in logs.items():
            pts = [(r["nimg"] / 1000, r[key]) for r in log if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), lw=0.6, label=name)
        ax.set(title=key.replace("energy_", "energy distance, "), xlabel="kimg")
        if key.startswith("energy_"):
            # U-statistics can dip below zero near the floor: symlog keeps them; the teacher's level for scale
            ax.set_yscale("symlog", linthresh=1e-5)
            level = next((r["energy_teacher"] for log in logs.values() for r in log if "energy_teacher" in r), None)
            if level is not None:
                ax.axhline(level, color="k", ls="--", lw=0.6, label="teacher")
        if key in ("loss_fake", "loss_sid"):
            ax.set_yscale("symlog", linthresh=1e-4)
    axes[1].legend(fontsize=6)
    _save(fig, path)

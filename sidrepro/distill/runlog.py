"""What a distillation run shows while it trains: a progress bar, a JSON-lines log (losses, gradient norms, images
seen, seconds per iteration, images per second, peak memory), ``status.json`` and ``history.jsonl``
(``sidrepro.runstatus``: state, images seen, the last checkpoint and its write time, the job's deadline), PNG
sample grids from fixed latents at 1 and N steps, and loss curves. Only rank 0 writes."""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from ..runstatus import read_status, write_status
from ..sid.sampler import generate
from ..stopping import checkpoint_seconds_from
from ..teachers.base import TeacherAdapter
from .config import RunConfig

GRID_SEED = 2024  # the official loop's fixed grid latents


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory of this process, or its peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class RunLog:
    def __init__(self, out: Path, *, rank: int, cfg: RunConfig, adapter: TeacherAdapter, progress: bool, total: int,
                 start: int, grid_prompts: list[str] | None = None):
        self.out, self.rank, self.cfg, self.adapter = out, rank, cfg, adapter
        self.active = rank == 0
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.t_start, self.nimg_start, self.total, self.started = time.perf_counter(), start, total, time.time()
        self.bar = None
        self.grid_prompts = grid_prompts or []
        if self.active:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="img", desc=f"SiD {cfg.setting} {cfg.teacher}",
                            disable=not progress, leave=False)

    def status(self, state: str, nimg: int, *, checkpoint: Path | None = None, checkpoint_seconds: float = 0.0,
               reason: str = "", deadline: float | None = None, job_end: float | None = None) -> None:
        """Rank 0 records where the run stands (see ``write_status``)."""
        if not self.active:
            return
        elapsed = time.perf_counter() - self.t_start
        write_status(self.out, state=state, nimg=nimg, total_nimg=self.total, reason=reason,
                     images_per_sec=(nimg - self.nimg_start) / max(elapsed, 1e-9), started=self.started,
                     checkpoint=checkpoint.name if checkpoint else "", checkpoint_seconds=checkpoint_seconds,
                     checkpoint_started=0.0, deadline=deadline, job_end=job_end)

    def checkpoint_starts(self) -> None:
        """Rank 0 notes that a checkpoint write begins: if the job ends before it is complete, the next invocation
        learns from this how long the write took at least (``stopping.checkpoint_seconds_from``)."""
        if self.active:
            write_status(self.out, checkpoint_started=time.time())

    def evaluation_done(self, seconds: float) -> None:
        """Rank 0 records how long scoring a snapshot took, for the next invocation's time planning."""
        if self.active:
            write_status(self.out, evaluation_seconds=seconds)

    def previous_evaluation_seconds(self) -> float:
        """How long scoring a snapshot of this run took last time (0 if never)."""
        return float(read_status(self.out).get("evaluation_seconds") or 0.0)

    def previous_checkpoint_seconds(self) -> float:
        """How long a checkpoint of this run takes to write, as earlier invocations saw it (0 if unknown)."""
        return checkpoint_seconds_from(read_status(self.out))

    def accumulate(self, stats: dict[str, float]) -> None:
        """Add one micro-batch's per-sample means (averaged over micro-batches at the next ``step``)."""
        for k, v in stats.items():
            self.sums[k] += float(v)
            self.counts[k] += 1

    def iteration_sum(self, key: str) -> float:
        """The sum of ``key`` over the micro-batches accumulated since the last ``step`` (0 if none reported it):
        counts such as the samples a phase dropped."""
        return self.sums.get(key, 0.0)

    def step(self, nimg: int, stats: dict[str, float]) -> None:
        """Write one log row: the accumulated means, overridden by ``stats`` (the iteration's own values)."""
        row = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        if not self.active:
            return
        elapsed = time.perf_counter() - self.t_start
        row.update({k: float(v) for k, v in stats.items()})
        row.update(nimg=nimg, kimg=nimg / 1000, images_per_sec=(nimg - self.nimg_start) / max(elapsed, 1e-9),
                   peak_mem_gib=peak_memory_gib(self._device()))
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.bar is not None:
            self.bar.update(self.cfg.batch)
            self.bar.set_postfix(fake=f"{row.get('loss_fake', float('nan')):.3g}",
                                 sid=f"{row.get('loss_sid', float('nan')):.3g}")

    def _device(self) -> torch.device:
        return self.adapter.device

    @torch.no_grad()
    def snapshot(self, nimg: int, gen: nn.Module) -> None:
        """Sample grids from fixed latents and prompts at 1 and N steps (fixed noise for later steps too). Every rank
        must call this: a sharded generator's forward is a collective. Rank 0 writes the PNG."""
        if not self.grid_prompts:
            return
        from torchvision.utils import save_image

        ad, cfg = self.adapter, self.cfg
        g = torch.Generator(ad.device).manual_seed(GRID_SEED)
        z = ad.initial_noise(len(self.grid_prompts), cfg.resolution, generator=g)
        cond = ad.encode_prompts(self.grid_prompts)
        velocity = ad.bind(gen, cond).velocity
        grids = []
        for k in sorted({1, cfg.num_steps}):
            x = generate(velocity, z, k,
                         num_steps=cfg.num_steps, init_timestep=cfg.init_timestep, noise=cfg.noise,
                         generator=torch.Generator(ad.device).manual_seed(GRID_SEED + 1))
            grids.append((ad.decode(x) + 1) / 2)
        if not self.active:
            return
        folder = self.out / "grids"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".grid-{nimg:010d}.png"
        save_image(torch.cat(grids), tmp, nrow=len(self.grid_prompts))  # row 1: 1 step, row 2: N steps
        tmp.replace(folder / f"grid-{nimg:010d}.png")

    def close(self, nimg: int, *, finished: bool) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.active:
            plot_curves(self.out / "log.jsonl", self.out / "losses.png")


def plot_curves(log_file: Path, png: Path) -> None:
    """Loss and gradient-norm curves against images seen, from the JSON-lines log."""
    if not log_file.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    keys = [k for k in ("loss_fake", "loss_sid", "loss_disc", "loss_adv", "grad_norm_fake", "grad_norm_gen")
            if any(k in r for r in rows)]
    if not rows or not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["kimg"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("kimg")
    fig.tight_layout()
    tmp = png.with_name(".tmp-" + png.name)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png)

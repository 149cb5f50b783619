"""One SiD-DiT training iteration against its floor: the network passes it contains, timed in the same process.

The iteration is the trainer's own (``sidrepro.distill.trainer.train`` for a few iterations, its ``sec_per_iter``
log); the floor for an iteration with ``K`` generator steps is the sum of

- fake phase: ``K`` no-grad generator passes (batch B) + the fake network's forward and backward (2B under CFG);
- generator phase: ``K - 1`` no-grad generator passes + one generator pass with grad, the teacher's and the fake
  network's passes (2B each under CFG) and the backward through all three to the generator's weights;

each timed on its own with the same networks, shapes and precision. The ratio says what the loop adds on top of
the networks (prompt encoding, noise, optimiser steps, Python).

    .venv/bin/python bench/sid_iteration.py --teacher tiny-sd3 --iters 8
    .venv/bin/python bench/sid_iteration.py --teacher sana-1.6b --snapshot /path/to/snapshot --set precision=amp
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sidrepro.commands.distill import teacher_folder
from sidrepro.distill.config import parse_overrides, resolve_config
from sidrepro.distill.trainer import autocast, train
from sidrepro.flow import interpolate, x0_from_velocity
from sidrepro.sid.losses import generator_loss
from sidrepro.teachers.load import load_teacher

PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def floors(cfg, adapter, repeats: int) -> dict[int, float]:
    """Seconds of network passes for an iteration with K = 1..N generator steps (one micro-batch of batch_gpu)."""
    device = adapter.device
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    teacher, fake, gen = (adapter.load_transformer(dtype) for _ in range(3))
    teacher.requires_grad_(False)
    if cfg.grad_checkpointing:
        fake.enable_gradient_checkpointing()
        gen.enable_gradient_checkpointing()
    b = min(cfg.batch_gpu, cfg.batch)
    cond = adapter.encode_prompts((PROMPTS * b)[:b])
    uncond = adapter.empty(b)
    shape = adapter.latent_shape(cfg.resolution)
    x = torch.randn((b, *shape), device=device)
    t = torch.full((b,), 0.6, device=device)

    def gen_pass():
        with torch.no_grad(), autocast(cfg, device):
            adapter.bind(gen, cond).velocity(x, t)

    def fake_train():
        fake.requires_grad_(True)
        with autocast(cfg, device):
            v, _ = adapter.bind(fake, cond, uncond)(x, t, scale=cfg.cfg_train_fake)
        v.float().square().sum().backward()
        fake.zero_grad(set_to_none=True)

    def generator_loss_pass():
        fake.requires_grad_(False)
        gen.requires_grad_(True)
        with autocast(cfg, device):
            x_g = x - t.view(-1, 1, 1, 1) * adapter.bind(gen, cond).velocity(x, t)
            x_t = interpolate(x_g, torch.randn_like(x_g), t)
            v_r, _ = adapter.bind(teacher, cond, uncond)(x_t, t, scale=cfg.cfg_eval_real)
            v_f, _ = adapter.bind(fake, cond, uncond)(x_t, t, scale=cfg.cfg_eval_fake)
            loss = generator_loss(x_g, x0_from_velocity(x_t, v_r, t), x0_from_velocity(x_t, v_f, t), t).sum()
        loss.backward()
        gen.zero_grad(set_to_none=True)

    g_s = _time(gen_pass, device, repeats)
    f_s = _time(fake_train, device, repeats)
    l_s = _time(generator_loss_pass, device, repeats)
    rounds = cfg.per_rank(1)[1]
    return {k: rounds * (k * g_s + f_s + (k - 1) * g_s + l_s) for k in range(1, cfg.num_steps + 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="tiny-sd3")
    p.add_argument("--snapshot", type=Path, default=None)
    p.add_argument("--iters", type=int, default=8, help="iterations timed (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        over = {"prompts": str(prompts), "snapshot_ticks": "1000000", "checkpoint_ticks": "1000000",
                **parse_overrides(args.overrides)}
        cfg, _ = resolve_config(args.teacher, over)
        from dataclasses import replace

        cfg = replace(cfg, duration_kimg=cfg.batch * args.iters / 1000, tick_kimg=cfg.batch / 1000)
        weights = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        adapter = load_teacher(args.teacher, teacher_folder(args.teacher, args.snapshot), device=device,
                               dtype=weights)
        train(cfg, Path(tmp) / "run", adapter, progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()][1:]
        floor = floors(cfg, adapter, args.repeats)
    ratios = [r["sec_per_iter"] / floor[r["steps"]] for r in rows]
    it = statistics.median(r["sec_per_iter"] for r in rows)
    fl = statistics.median(floor[r["steps"]] for r in rows)
    print(f"{args.teacher} on {device} ({torch.get_num_threads()} threads), {cfg.precision}, batch {cfg.batch}, "
          f"micro-batch {cfg.batch_gpu}, {len(rows)} timed iterations")
    print(f"iteration {it * 1e3:.1f} ms, network floor {fl * 1e3:.1f} ms, ratio median {statistics.median(ratios):.2f}"
          f" (min {min(ratios):.2f}, max {max(ratios):.2f}); peak memory {rows[-1]['peak_mem_gib']:.2f} GiB "
          f"({'GPU' if device == 'cuda' else 'process RSS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny-zoo throughput per teacher family on this CPU: the family's multi-step sampler (images per second, prompt
encoding included) and one velocity forward / forward + backward of the transformer.

    .venv/bin/python bench/teacher_cpu.py --zoo work/zoo --batch 4 --steps 4

Builds the zoo first when the folder is missing. Figures are for the tiny models only: they measure the adapter
and pipeline overheads, not the real teachers (see bench/teacher_gpu.py for those).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sidrepro.teachers.load import load_teacher
from sidrepro.teachers.registry import TEACHERS

PROMPTS = ["a red cube on a wooden table", "two cats asleep in the sun", "a lighthouse at dusk", "a bowl of fruit"]


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_one(folder: Path, name: str, prompts: list[str], steps: int, repeats: int
              ) -> tuple[float, float, float, float]:
    """(parameters in millions, sampled images per second, forward seconds, forward + backward seconds)."""
    ad = load_teacher(name, folder)
    net = ad.load_transformer()
    batch = len(prompts)
    noise = ad.initial_noise(batch, generator=torch.Generator().manual_seed(0))
    sample_s = _best(lambda: ad.sample(net, ad.encode_prompts(prompts), steps=steps, noise=noise), repeats)
    cond = ad.encode_prompts(prompts)
    t = torch.full((batch,), 0.5)
    with torch.no_grad():
        fwd = _best(lambda: ad.velocity(net, noise, t, cond), repeats)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        ad.velocity(net, noise, t, cond)[0].square().mean().backward()

    fb = _best(fwd_bwd, repeats)
    return sum(q.numel() for q in net.parameters()) / 1e6, batch / sample_s, fwd, fb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=Path("work/zoo"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    names = [n for n, e in TEACHERS.items() if e.zoo]
    if not all((args.zoo / n).is_dir() for n in names):
        from sidrepro.teachers.zoo import build_zoo

        build_zoo(args.zoo, names=names)
    prompts = (PROMPTS * args.batch)[: args.batch]
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps")
    print(f"{'teacher':26} {'params M':>8} {'sample img/s':>12} {'fwd ms':>8} {'fwd+bwd ms':>10}")
    for name in names:
        params, rate, fwd, fb = bench_one(args.zoo / name, name, prompts, args.steps, args.repeats)
        print(f"{name:26} {params:>8.2f} {rate:>12.1f} {fwd * 1e3:>8.1f} {fb * 1e3:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

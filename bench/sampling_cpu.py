"""Images per second of the metric sampling path on the tiny zoo on this CPU: a distilled student (SiD 4-step
sampler), a teacher (its family's sampler at its registry steps, with CFG) and a baseline (its diffusers pipeline),
each through ``sample_shard`` end to end (prompt encoding, sampling, VAE decode, Lanczos resize, PNG, manifest).

    OMP_NUM_THREADS=2 .venv/bin/python bench/sampling_cpu.py --work work/bench-sampling --images 32 --batch 8

Builds the zoo entries it needs and a 2-iteration tiny-sd3 student under ``--work`` first. The figures measure the
overheads of the pipeline around tiny networks, not the real models.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from sidrepro.evaluate.sampling import ModelSpec, load_sampler, sample_shard

CAPTIONS = ["a red cube on a wooden table", "two cats asleep in the sun", "a lighthouse at dusk", "a bowl of fruit",
            "a city street in the rain", "a mountain lake", "an old bicycle", "a plate of pasta"]


def _student(work: Path, zoo: Path) -> Path:
    """A tiny-sd3 student after 2 SiD iterations (as in tests/test_distill_trainer.py), exported once."""
    from sidrepro.distill.config import resolve_config
    from sidrepro.distill.export import export_student
    from sidrepro.distill.trainer import train
    from sidrepro.teachers.load import load_teacher

    out = work / "student"
    if not out.exists():
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(CAPTIONS) + "\n")
        cfg, sources = resolve_config("tiny-sd3", {"prompts": str(prompts), "duration_kimg": "0.008",
                                                   "checkpoint_ticks": "1", "snapshot_ticks": "100"})
        shutil.rmtree(work / "run", ignore_errors=True)
        train(cfg, work / "run", load_teacher("tiny-sd3", zoo / "tiny-sd3"), progress=False, sources=sources)
        export_student(work / "run", zoo / "tiny-sd3", out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work/bench-sampling"))
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution-out", type=int, default=256)
    p.add_argument("--teacher", default="tiny-sana")
    p.add_argument("--baseline", default="tiny-flux-schnell")
    args = p.parse_args()
    from sidrepro.teachers.registry import BASELINES
    from sidrepro.teachers.zoo import build_zoo

    args.work.mkdir(parents=True, exist_ok=True)
    zoo = build_zoo(args.work / "zoo", names=["tiny-sd3", args.teacher, BASELINES[args.baseline].hub_id])
    specs = {"student": ModelSpec.student(_student(args.work, args.work / "zoo")),
             "teacher": ModelSpec.teacher(args.teacher, zoo[args.teacher]),
             "baseline": ModelSpec.baseline(args.baseline, zoo[BASELINES[args.baseline].hub_id])}
    captions = [(i, i, CAPTIONS[i % len(CAPTIONS)]) for i in range(args.images)]
    print(f"{torch.get_num_threads()} threads, {args.images} images, batch {args.batch}, "
          f"PNG {args.resolution_out} px")
    print(f"{'kind':9} {'model':20} {'steps':>5} {'guidance':>8} {'load s':>7} {'img/s':>7} {'sampler-only img/s':>18}")
    for kind, spec in specs.items():
        t0 = time.perf_counter()
        sampler = load_sampler(spec)
        load_s = time.perf_counter() - t0
        sampler([c for _, _, c in captions[:args.batch]], list(range(args.batch)))  # warm-up
        out = args.work / "samples" / kind
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        sample_shard(sampler, captions, out, batch=args.batch, resolution_out=args.resolution_out, progress=False)
        rate = args.images / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, args.images, args.batch):
            chunk = captions[i:i + args.batch]
            sampler([c for _, _, c in chunk], [p for p, _, _ in chunk], pad_to=args.batch)
        raw = args.images / (time.perf_counter() - t0)
        r = sampler.record
        guidance = "none" if r.guidance is None else f"{r.guidance:g}"
        print(f"{kind:9} {r.name:20} {r.steps:>5} {guidance:>8} {load_s:>7.2f} {rate:>7.1f} {raw:>18.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

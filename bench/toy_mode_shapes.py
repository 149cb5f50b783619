"""Per-mode shapes of a toy run's teacher and students: where a 2-D energy distance comes from.

For each mixture component (label) the script samples the model conditioned on that label and compares the sample
mean and covariance with the component's own, in the component's whitened coordinates: the mean shift in units
of its standard deviation, and the eigenvalues of the whitened sample covariance (1 = the right shape; 0.5 = half
the variance along that axis). The energy distance folds all of this into one number; this says which modes are
displaced, too narrow or too wide, and whether a student copies its teacher's shape errors or makes its own.
``result.json`` carries the same figures from the evaluation's first sample set (``shape``); this script draws
a fixed number of samples per component instead, so that rare components are measured as well as common ones.

    python bench/toy_mode_shapes.py runs/toy [--samples 20000] [--seed 5]

Needs a conditional run folder written by ``sidrepro toy`` (``result.json`` and ``models.pt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sidrepro.sid.sampler import generate
from sidrepro.toy.bench import load_run
from sidrepro.toy.metrics import mode_shapes
from sidrepro.toy.teacher import Bound, euler_sample


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a `sidrepro toy` output folder")
    p.add_argument("--samples", type=int, default=20_000, help="samples per component and model")
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args()
    run = load_run(args.run)
    cfg, world = run.cfg, run.truth
    if not cfg.conditional:
        raise SystemExit(f"{args.run} distilled the unconditional model: per-mode shapes need labels")
    g = torch.Generator().manual_seed(args.seed)
    n = args.samples
    models = [("teacher", run.teacher, "", [cfg.teacher_steps])]
    models += [(s.name, s.net, s.noise, sorted({1, cfg.num_steps})) for s in run.students]
    print(f"{args.run}: {world.modes} modes; per mode: mean shift (std units) | whitened covariance eigenvalues")
    for name, m, noise, step_list in models:
        for steps in step_list:
            labels = torch.arange(world.modes).repeat_interleave(n)  # n samples per component
            with torch.no_grad():
                if not noise:
                    x = euler_sample(m, labels, steps=steps, scale=cfg.guidance, generator=g)
                else:
                    x = generate(Bound(m, labels).velocity, torch.randn(len(labels), world.dim, generator=g),
                                 steps, num_steps=cfg.num_steps, noise=noise, generator=g)
            sh = mode_shapes(x, labels, world)
            print(f"{name:28s} {steps:2d} steps  shift " + " ".join(f"{m['shift']:.2f}" for m in sh["per_mode"])
                  + f"  (max {sh['shift_max']:.2f})")
            print(f"{'':38s}  eig   " + " ".join(f"{min(m['eig']):.2f}-{max(m['eig']):.2f}" for m in sh["per_mode"])
                  + f"  (worst factor {sh['axis_factor_max']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

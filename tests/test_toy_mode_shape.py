"""The per-mode shape read off samples (sidrepro.toy.metrics.mode_shape, mode_shapes): true samples give no shift
and unit whitened eigenvalues; samples squeezed along a component's axis give the squeeze back."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch

from sidrepro.toy.metrics import mode_shape, mode_shapes
from sidrepro.toy.mixture import WorldSpec, make_world

ROOT = Path(__file__).resolve().parents[1]


def test_true_samples_have_the_true_shape_and_a_squeeze_is_read_back():
    world = make_world(WorldSpec(dim=2, modes=4, seed=3))
    g = torch.Generator().manual_seed(0)
    k = 2
    x, _ = world.sample(200_000, g, labels=torch.full((200_000,), k))
    shift, eig = mode_shape(x, world, k)
    assert shift < 0.01 and all(abs(e - 1) < 0.02 for e in eig)
    # Half the standard deviation along the component's widest axis: whitened variance 1/4 there, 1 across it.
    axis = world.eigvec[k][:, -1].float()
    mean = world.means[k].float()
    along = (x - mean) @ axis
    squeezed = x - 0.5 * along[:, None] * axis[None, :]
    shift, eig = mode_shape(squeezed, world, k)
    assert shift < 0.01 and abs(min(eig) - 0.25) < 0.01 and abs(max(eig) - 1) < 0.02
    shift, _ = mode_shape(x + 0.5 * world.lam[k].sqrt().max().float() * axis, world, k)
    assert abs(shift - 0.5) < 0.01


def test_mode_shapes_names_the_worst_component_and_skips_empty_ones():
    world = make_world(WorldSpec(dim=2, modes=4, seed=3))
    g = torch.Generator().manual_seed(1)
    x, labels = world.sample(100_000, g)
    # Move component 1's samples by 0.8 of its largest standard deviation and widen component 3's by 2x in
    # variance along one axis; drop component 0 altogether.
    axis1 = world.eigvec[1][:, -1].float()
    x[labels == 1] += 0.8 * world.lam[1].sqrt().max().float() * axis1
    axis3, mean3 = world.eigvec[3][:, 0].float(), world.means[3].float()
    along = (x[labels == 3] - mean3) @ axis3
    x[labels == 3] += (math.sqrt(2) - 1) * along[:, None] * axis3[None, :]
    keep = labels != 0
    sh = mode_shapes(x[keep], labels[keep], world)
    assert sh["per_mode"][0] is None
    assert abs(sh["shift_max"] - 0.8) < 0.02
    assert abs(sh["axis_factor_max"] - 2.0) < 0.06
    assert sh["per_mode"][2]["shift"] < 0.03


def test_bench_script_prints_shapes_of_a_saved_run(tmp_path):
    """bench/toy_mode_shapes.py on a tiny run written by the benchmark."""
    from sidrepro.toy.bench import ToyBenchConfig, run
    from sidrepro.toy.distill import DistillConfig
    from sidrepro.toy.teacher import TeacherConfig

    cfg = ToyBenchConfig(world=WorldSpec(dim=2, modes=3, seed=0), settings=("data-free",), noises=("fresh",),
                         teacher=TeacherConfig(iters=40), distill=DistillConfig(iters=4, batch=32),
                         eval_samples=2000, eval_repeats=2)
    result = run(cfg, tmp_path, progress=False)
    assert result["teacher"]["shape"]["axis_factor_max"] >= 1.0
    assert all(len(s["shape"]["per_mode"]) == 3 for s in result["students"])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "toy_mode_shapes.py"), str(tmp_path),
                           "--samples", "500"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "worst factor" in proc.stdout and "SiD data-free (fresh)" in proc.stdout

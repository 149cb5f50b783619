"""bench/toy_mode_shapes.py reads a component's shape off samples: true samples give no shift and unit whitened
eigenvalues; samples squeezed along the component's axes give the squeeze back."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from toy_mode_shapes import mode_shape

from sidrepro.toy.mixture import WorldSpec, make_world


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

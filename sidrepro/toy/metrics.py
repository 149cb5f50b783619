"""Sample-based distances between point clouds, each zero for identical distributions."""

from __future__ import annotations

import torch
from torch import Tensor

from .mixture import GaussianMixture


def _mean_pairwise(x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        total += float(torch.cdist(x[i:i + chunk], y).double().sum())
    return total / (x.shape[0] * y.shape[0])


@torch.no_grad()
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic: >= 0, zero iff equal
    laws in the population limit; its floor for two samples of size n shrinks like 1/n)."""
    x, y = x.float(), y.float()
    return 2 * _mean_pairwise(x, y) - _mean_pairwise(x, x) - _mean_pairwise(y, y)


@torch.no_grad()
def sliced_w2(x: Tensor, y: Tensor, *, projections: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance over random unit directions (equal sample sizes: sorted matching)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs equal sample shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape[1], projections, generator=g)
    d = d / d.norm(dim=0, keepdim=True)
    px, _ = (x.float() @ d).sort(dim=0)
    py, _ = (y.float() @ d).sort(dim=0)
    return float(((px - py) ** 2).mean().sqrt())


@torch.no_grad()
def mode_weight_error(x: Tensor, data: GaussianMixture) -> tuple[float, list[float]]:
    """Total variation between the modes' frequencies among ``x`` (nearest mode by posterior) and the true
    weights; also returns the frequencies."""
    freq = torch.bincount(data.assign(x), minlength=data.modes).double() / x.shape[0]
    return float(0.5 * (freq - data.weights).abs().sum()), freq.tolist()

"""Sample-based distances between point clouds, each zero for identical distributions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .mixture import GaussianMixture


def _pair_sum(x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    """Sum of ``|x_i - y_j|`` over all pairs, accumulated in float64."""
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        total += float(torch.cdist(x[i:i + chunk], y).sum(dtype=torch.float64))
    return total


def _mean_pairwise(x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    return _pair_sum(x, y, chunk) / (x.shape[0] * y.shape[0])


def _self_pair_sum(x: Tensor, chunk: int = 2048) -> float:
    """Sum of ``|x_i - x_j|`` over ordered pairs ``i != j`` (the diagonal is zero), from the upper block triangle
    only: half the work of the full matrix."""
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        block = x[i:i + chunk]
        total += float(torch.cdist(block, block).sum(dtype=torch.float64))  # both halves of the diagonal block
        if i + chunk < x.shape[0]:
            total += 2 * float(torch.cdist(block, x[i + chunk:]).sum(dtype=torch.float64))
    return total


@torch.no_grad()
def within_mean(x: Tensor) -> float:
    """Unbiased estimate of ``E|X - X'|``: the mean of ``|x_i - x_j|`` over ``i != j``."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"within_mean needs at least 2 points, got {n}")
    return _self_pair_sum(x.float()) / (n * (n - 1))


class EnergyReference:
    """A reference sample with its within-sample term computed once, so that scoring many models against the same
    reference costs one cross term and one within term per model instead of three terms."""

    def __init__(self, y: Tensor):
        self.y = y.float()
        self.within = within_mean(self.y)

    @torch.no_grad()
    def distances(self, x: Tensor) -> tuple[float, float]:
        """``(U, V)``: the unbiased and the biased (V-statistic) squared energy distance of ``x`` to the reference.
        Both share the cross term; they differ only in the within-sample diagonals, which V counts as zeros."""
        x = x.float()
        n, m = x.shape[0], self.y.shape[0]
        cross, wx = _mean_pairwise(x, self.y), within_mean(x)
        return 2 * cross - wx - self.within, 2 * cross - (n - 1) / n * wx - (m - 1) / m * self.within


@torch.no_grad()
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic: >= 0, zero iff equal
    laws in the population limit; its floor for two samples of size n shrinks like 1/n)."""
    x, y = x.float(), y.float()
    return 2 * _mean_pairwise(x, y) - _mean_pairwise(x, x) - _mean_pairwise(y, y)


@torch.no_grad()
def energy_distance_u(x: Tensor, y: Tensor) -> float:
    """Squared energy distance as the unbiased U-statistic: the within-sample means exclude the ``i = j`` terms.
    Zero in expectation for equal laws (so it can come out slightly negative), positive in expectation otherwise;
    unlike :func:`energy_distance` it carries no ``O(1/n)`` self-distance bias, so ratios of distances are
    ratios of the true distances."""
    return EnergyReference(y).distances(x)[0]


def mean_abs_projection(dim: int) -> float:
    """``E|theta_1|`` for ``theta`` uniform on the unit sphere in ``R^dim``: ``E|theta . v| = |v| E|theta_1|``, so
    an energy distance is ``1 / E|theta_1|`` times the mean over directions of its 1-D projections' distances."""
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def random_directions(dim: int, count: int, generator: torch.Generator) -> Tensor:
    """``(dim, count)`` unit directions, each uniform on the sphere, spread evenly: in 2-D equispaced angles with
    a random offset (stratified); otherwise random orthonormal frames of ``dim`` directions each (``count`` is
    rounded up to whole frames)."""
    if dim == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if dim == 2:
        angles = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(count)) * math.pi / count
        return torch.stack([angles.cos(), angles.sin()])
    frames = [torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))[0]
              for _ in range(-(-count // dim))]
    return torch.cat(frames, dim=1)


def _sorted_self_sums(s: Tensor) -> Tensor:
    """Per row of the row-sorted ``s``: the sum of ``|s_i - s_j|`` over ordered pairs ``i != j``."""
    n = s.shape[1]
    w = 2 * torch.arange(1, n + 1, dtype=s.dtype) - n - 1
    return 2 * (s * w).sum(1)


def _cross_sums(px: Tensor, ys: Tensor, ys_cum: Tensor) -> Tensor:
    """Per row: ``sum_ij |px_i - ys_j|`` from the row-sorted ``ys`` and its prefix sums (binary search, no pairs)."""
    c = torch.searchsorted(ys, px)  # how many y lie below each x
    below = ys_cum.gather(1, c)
    return (px * (2 * c - ys.shape[1]) - 2 * below + ys_cum[:, -1:]).sum(1)


class SlicedEnergyReference:
    """Energy distances to a reference sample in ``O(n log n)``: the energy distance is the mean over directions of
    the 1-D energy distances of the projections (times ``1 / E|theta_1|``), and each 1-D U-statistic is exact from
    sorted values. With directions drawn afresh per reference (:func:`random_directions`) the estimate is unbiased
    for the squared energy distance, so sample sets of 10^5 points cost seconds where pairwise sums cost minutes.
    The reference's sorted projections and within-sample sums are computed once."""

    # Directions per pass: keeps each temporary under glibc's mmap ceiling at 10^5 points, so that buffers are
    # reused instead of mapped and faulted in afresh (which had doubled the run time in system calls).
    CHUNK = 16

    def __init__(self, y: Tensor, *, directions: int = 64, generator: torch.Generator | None = None):
        self.y = y.float()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self.dirs = random_directions(y.shape[1], directions, g).split(self.CHUNK, dim=1)
        self.scale = 1 / mean_abs_projection(y.shape[1])
        self.ys, self.ys_cum, syy = [], [], []
        for d in self.dirs:
            ys = (self.y.double() @ d).T.contiguous().sort(dim=1).values
            self.ys.append(ys)
            self.ys_cum.append(torch.cat([torch.zeros(ys.shape[0], 1, dtype=torch.float64), ys.cumsum(1)], dim=1))
            syy.append(_sorted_self_sums(ys))
        self.syy = torch.cat(syy)

    @torch.no_grad()
    def distances(self, x: Tensor) -> tuple[float, float]:
        """``(U, V)`` as :meth:`EnergyReference.distances`, over the projections."""
        sxx, sxy = [], []
        for d, ys, ys_cum in zip(self.dirs, self.ys, self.ys_cum, strict=True):
            px = (x.double() @ d).T.contiguous()
            sxx.append(_sorted_self_sums(px.sort(dim=1).values))
            sxy.append(_cross_sums(px, ys, ys_cum))
        sxx, sxy = torch.cat(sxx), torch.cat(sxy)
        n, m = x.shape[0], self.y.shape[0]
        u = 2 * sxy / (n * m) - sxx / (n * (n - 1)) - self.syy / (m * (m - 1))
        v = 2 * sxy / (n * m) - sxx / n**2 - self.syy / m**2
        return self.scale * float(u.mean()), self.scale * float(v.mean())


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


@torch.no_grad()
def mode_shape(x: Tensor, data: GaussianMixture, k: int) -> tuple[float, list[float]]:
    """How samples ``x`` of component ``k`` sit against the component itself, in its whitened coordinates: the
    mean shift in standard deviations, and the eigenvalues of the whitened sample covariance (1 = the right width
    along that axis; 0.25 = half the standard deviation)."""
    x = x.double()
    whiten = torch.linalg.inv(torch.linalg.cholesky(data.covs[k].double()))
    shift = float((whiten @ (x.mean(0) - data.means[k].double())).norm())
    eig = torch.linalg.eigvalsh(whiten @ torch.cov(x.T) @ whiten.T)
    return shift, eig.tolist()


def mode_shapes(x: Tensor, labels: Tensor, data: GaussianMixture) -> dict:
    """Per component, the shape (:func:`mode_shape`) of the samples drawn for its label, and the worst over
    components: the largest shift and the largest factor by which an axis's variance is off, wider or narrower
    (``max(v, 1 / v)`` over the whitened eigenvalues). Components with too few samples for a covariance get None.
    This says whether a distance comes from modes that are displaced, too narrow or too wide."""
    per_mode: list[dict | None] = []
    for k in range(data.modes):
        xk = x[labels == k]
        if xk.shape[0] <= 2 * data.dim:
            per_mode.append(None)
            continue
        shift, eig = mode_shape(xk, data, k)
        per_mode.append({"shift": shift, "eig": eig, "samples": int(xk.shape[0])})
    seen = [m for m in per_mode if m is not None]
    if not seen:
        return {"shift_max": math.nan, "axis_factor_max": math.nan, "per_mode": per_mode}
    return {"shift_max": max(m["shift"] for m in seen),
            "axis_factor_max": max(max(v, 1 / v) if v > 0 else math.inf for m in seen for v in m["eig"]),
            "per_mode": per_mode}

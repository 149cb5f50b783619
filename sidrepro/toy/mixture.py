"""A Gaussian-mixture world whose flow-matching velocity field is known in closed form.

Under rectified flow ``x_t = (1 - t) x0 + t eps`` a mixture ``sum_k w_k N(mu_k, S_k)`` stays a mixture:
``x_t ~ sum_k w_k N(a mu_k, a^2 S_k + s^2 I)`` with ``a = 1 - t``, ``s = t``. Bayes' rule then gives the
component responsibilities and, per component, the Gaussian posterior mean of ``x0``; the exact velocity is
``E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t``. Labels (the component index) play the role of prompts;
label ``K`` is the empty prompt (unconditional).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .world_spec import WorldSpec

__all__ = ["GaussianMixture", "WorldSpec", "make_world"]


class GaussianMixture:
    """``sum_k weights[k] N(means[k], covs[k])`` with exact sampling, density and posterior means (float64)."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        self.weights = weights.double() / weights.double().sum()
        self.means = means.double()
        self.covs = 0.5 * (covs.double() + covs.double().transpose(-1, -2))
        self.modes, self.dim = self.means.shape
        # Eigen-decomposition once: S_k = U diag(lam) U^T makes every per-time covariance diagonal.
        self.lam, self.eigvec = torch.linalg.eigh(self.covs)
        if (self.lam <= 0).any():
            raise ValueError("mixture covariances must be positive definite")

    @property
    def null_label(self) -> int:
        """The label that means "no prompt"."""
        return self.modes

    # --- sampling ----------------------------------------------------------------------------------------
    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """``n`` samples ``(B, D)`` (float32) and their component labels."""
        if labels is None:
            labels = self.sample_labels(n, generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("bij,bj->bi", self.eigvec[labels], self.lam[labels].sqrt() * z)
        return x.float(), labels

    # --- Bayes' rule at time t ---------------------------------------------------------------------------
    def _per_component(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Log-density of ``x_t`` under each noised component ``(B, K)`` and each component's ``E[x0 | x_t, k]``
        ``(B, K, D)``."""
        x = x_t.double()
        t = t.double().reshape(-1, 1, 1)
        a, s = 1 - t, t
        var = a**2 * self.lam + s**2  # (B, K, D) eigenvalues of a^2 S_k + s^2 I
        r = torch.einsum("kji,bkj->bki", self.eigvec, x[:, None, :] - a * self.means)  # U_k^T (x - a mu_k)
        logp = -0.5 * ((r**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        x0 = self.means + torch.einsum("kij,bkj->bki", self.eigvec, a * self.lam / var * r)
        return logp, x0

    def posterior_x0(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """``E[x0 | x_t]`` (or ``E[x0 | x_t, label]`` where a label is not the null label), float64."""
        logp, x0_k = self._per_component(x_t, t)
        logits = logp + self.weights.log()
        if labels is not None:
            cond = labels < self.modes
            onehot = torch.full_like(logits, -math.inf)
            onehot[cond, labels[cond]] = 0.0
            logits = torch.where(cond[:, None], onehot, logits)
        resp = torch.softmax(logits, dim=-1)
        return (resp[..., None] * x0_k).sum(1)

    def velocity(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The exact rectified-flow velocity ``E[eps - x0 | x_t(, label)] = (x_t - E[x0 | ...]) / t``."""
        x0 = self.posterior_x0(x_t, t, labels)
        return ((x_t.double() - x0) / t.double()[:, None]).to(x_t.dtype)

    def assign(self, x: Tensor) -> Tensor:
        """The most probable component of each clean sample (for per-mode weight errors)."""
        logp, _ = self._per_component(x, torch.full((x.shape[0],), 1e-12, dtype=torch.float64))
        return (logp + self.weights.log()).argmax(-1)

    # --- variants ----------------------------------------------------------------------------------------
    def biased(self, bias: float, seed: int) -> GaussianMixture:
        """A misspecified copy: weights tilted by ``exp(bias * g_k)`` and each mean moved ``bias / 10`` (about
        two to three mode widths of the default world) along a random direction. A teacher trained on it is wrong
        in a known way; ``bias = 0`` returns an equal copy."""
        if not bias >= 0:
            raise ValueError(f"bias must be >= 0, got {bias}")
        g = torch.Generator().manual_seed(seed + 7919)
        tilt = torch.randn(self.modes, generator=g, dtype=torch.float64)
        shift = torch.randn(self.modes, self.dim, generator=g, dtype=torch.float64)
        shift = shift / shift.norm(dim=1, keepdim=True)
        return GaussianMixture(self.weights * torch.exp(bias * tilt), self.means + 0.1 * bias * shift, self.covs)


def _random_rotation(dim: int, g: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def make_world(spec: WorldSpec) -> GaussianMixture:
    """The mixture a :class:`WorldSpec` names: the seed picks weights, means and covariances.

    Means are redrawn until every pair is at least ``5 * max_std`` apart, so that the modes are distinct; the
    whole mixture is then scaled to unit variance per axis (on average), so ``std`` values are relative.
    """
    g = torch.Generator().manual_seed(spec.seed)
    # Exp(1) + 0.5: uneven weights, but no vanishing mode
    weights = -torch.log(torch.rand(spec.modes, generator=g, dtype=torch.float64)) + 0.5
    min_dist = 5 * spec.max_std
    for _ in range(1000):
        means = spec.mean_scale * torch.randn(spec.modes, spec.dim, generator=g, dtype=torch.float64)
        if spec.modes == 1 or torch.pdist(means).min() >= min_dist:
            break
    else:
        raise ValueError(
            f"cannot place {spec.modes} modes {min_dist:.2f} apart in {spec.dim}-D with mean_scale "
            f"{spec.mean_scale}; raise mean_scale or lower max_std"
        )
    covs = []
    for _ in range(spec.modes):
        rot = _random_rotation(spec.dim, g)
        std = spec.min_std + (spec.max_std - spec.min_std) * torch.rand(spec.dim, generator=g, dtype=torch.float64)
        covs.append(rot @ torch.diag(std**2) @ rot.T)
    covs = torch.stack(covs)
    # Rescale so that the data has unit variance per axis on average, as VAE latents are normalised to have.
    w = weights / weights.sum()
    centred = means - (w[:, None] * means).sum(0)
    var = ((w[:, None] * centred**2).sum() + (w * covs.diagonal(dim1=1, dim2=2).sum(1)).sum()) / spec.dim
    return GaussianMixture(weights, means / var.sqrt(), covs / var)

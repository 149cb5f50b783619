"""Gaussian paths: diffusion and flow matching as one family, ``x_t = a(t) x0 + s(t) eps``.

Every path below corrupts clean data ``x0`` with Gaussian noise ``eps``; what differs is only how the signal
scale ``a`` and noise scale ``s`` move with time. Because ``x_t`` is a linear function of ``(x0, eps)``, any
prediction of one of ``velocity = a' x0 + s' eps``, ``x0`` or ``eps`` determines the other two (a 2x2 linear
solve), and the optimal predictor of each is the posterior mean given ``x_t`` (Bayes' rule). Two paths with the
same noise-to-signal ratio ``s/a`` at times ``t`` and ``u`` see the same posterior up to a rescaling of ``x_t``,
which is what :func:`convert_time` computes.

Shapes: ``x`` tensors are ``(B, ...)``; times are ``(B,)`` tensors or Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TimeLike = Tensor | float


def _bcast(t: TimeLike, like: Tensor) -> Tensor:
    """Reshape a per-sample time ``(B,)`` (or a float) so that it broadcasts against ``like`` ``(B, ...)``."""
    if not torch.is_tensor(t):
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.to(like.dtype)
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"time must have shape (B,) = ({like.shape[0]},), got {tuple(t.shape)}")
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class GaussianPath:
    """A path ``x_t = alpha(t) x0 + sigma(t) eps``; subclasses give the schedule and its time derivatives."""

    name: str = "path"
    t_min: float = 0.0
    t_max: float = 1.0

    # --- schedule (elementwise on tensors) -------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def time_from_ratio(self, ratio: Tensor) -> Tensor:
        """The time at which ``sigma / alpha`` equals ``ratio`` (the inverse noise-to-signal map)."""
        raise NotImplementedError

    def ratio(self, t: Tensor) -> Tensor:
        """Noise-to-signal ratio ``sigma(t) / alpha(t)``, increasing in ``t``."""
        return self.sigma(t) / self.alpha(t)

    # --- the path itself ---------------------------------------------------------------------------------
    def _coeffs(self, t: TimeLike, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tb = _bcast(t, like)
        return self.alpha(tb), self.sigma(tb), self.d_alpha(tb), self.d_sigma(tb)

    def interpolate(self, x0: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
        a, s, _, _ = self._coeffs(t, x0)
        return a * x0 + s * eps

    def velocity(self, x0: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
        """The path's time derivative ``d x_t / dt`` for a given pair ``(x0, eps)``: the flow-matching target."""
        _, _, da, ds = self._coeffs(t, x0)
        return da * x0 + ds * eps

    # x_t = a x0 + s eps and v = a' x0 + s' eps form a 2x2 system; det = a s' - s a' > 0 for every path here.
    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t: TimeLike) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (ds * x_t - s * v) / (a * ds - s * da)

    def eps_from_velocity(self, x_t: Tensor, v: Tensor, t: TimeLike) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (a * v - da * x_t) / (a * ds - s * da)

    def velocity_from_x0(self, x_t: Tensor, x0: Tensor, t: TimeLike) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        eps = (x_t - a * x0) / s
        return da * x0 + ds * eps

    def velocity_from_eps(self, x_t: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        x0 = (x_t - s * eps) / a
        return da * x0 + ds * eps

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - s * eps) / a

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: TimeLike) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - a * x0) / s


class RectifiedFlow(GaussianPath):
    """``x_t = (1 - t) x0 + t eps`` on ``t in [0, 1]``; velocity ``eps - x0``. Used by every SiD-DiT teacher."""

    name = "rectified_flow"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_from_ratio(self, ratio: Tensor) -> Tensor:
        return ratio / (1 + ratio)


class TrigFlow(GaussianPath):
    """``x_t = cos(t) x0 + sin(t) eps`` on ``t in [0, pi/2]`` (unit data variance convention of SANA-Sprint/sCM)."""

    name = "trigflow"
    t_max = math.pi / 2

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def time_from_ratio(self, ratio: Tensor) -> Tensor:
        return torch.atan(ratio)


@dataclass(frozen=True)
class VariancePreserving(GaussianPath):
    """VP diffusion with the continuous linear-beta schedule (DDPM/score-SDE):
    ``alpha = exp(-B(t)/2)``, ``sigma = sqrt(1 - alpha^2)``, ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def _big_b(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self._big_b(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self._big_b(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t) * self.alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        return 0.5 * self._beta(t) * a * a / self.sigma(t)

    def time_from_ratio(self, ratio: Tensor) -> Tensor:
        # ratio^2 = exp(B) - 1  =>  B = log1p(ratio^2); solve the quadratic B(t) = b for t >= 0.
        b = torch.log1p(ratio**2)
        d = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b)) / d


RECTIFIED_FLOW = RectifiedFlow()
TRIGFLOW = TrigFlow()
VP = VariancePreserving()
PATHS: dict[str, GaussianPath] = {p.name: p for p in (RECTIFIED_FLOW, TRIGFLOW, VP)}


def get_path(name: str) -> GaussianPath:
    """Look a path up by name, with an error that lists the valid names."""
    try:
        return PATHS[name]
    except KeyError:
        raise ValueError(f"unknown Gaussian path {name!r}; choose one of {sorted(PATHS)}") from None


def convert_time(t: Tensor, src: GaussianPath, dst: GaussianPath) -> tuple[Tensor, Tensor]:
    """Map time ``t`` on ``src`` to ``(u, scale)`` on ``dst`` with ``x_t(src) = scale * x_u(dst)`` in law.

    Both states carry the same noise-to-signal ratio, so their posteriors over ``x0`` coincide once ``x_t`` is
    divided by ``scale = alpha_src(t) / alpha_dst(u)``.
    """
    t = torch.as_tensor(t)
    u = dst.time_from_ratio(src.ratio(t))
    return u, src.alpha(t) / dst.alpha(u)


def convert_velocity(
    x_t: Tensor, v: Tensor, t: Tensor, src: GaussianPath, dst: GaussianPath
) -> tuple[Tensor, Tensor, Tensor]:
    """Re-express a velocity prediction on ``src`` as ``(x_u, v_u, u)`` on ``dst`` via the shared x0 prediction."""
    x0 = src.x0_from_velocity(x_t, v, t)
    u, scale = convert_time(t, src, dst)
    x_u = x_t / _bcast(scale, x_t)
    return x_u, dst.velocity_from_x0(x_u, x0, u), u


# --- the rectified-flow shorthands the rest of the project uses (design §3) ------------------------------
def interpolate(x0: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
    """Rectified-flow noising ``x_t = (1 - t) x0 + t eps``."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def x0_from_velocity(x_t: Tensor, v: Tensor, t: TimeLike) -> Tensor:
    """Rectified flow: ``x0 = x_t - t v``."""
    return x_t - _bcast(t, x_t) * v


def eps_from_velocity(x_t: Tensor, v: Tensor, t: TimeLike) -> Tensor:
    """Rectified flow: ``eps = x_t + (1 - t) v``."""
    return x_t + (1 - _bcast(t, x_t)) * v


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: TimeLike) -> Tensor:
    """Rectified flow: ``v = (x_t - x0) / t``."""
    return (x_t - x0) / _bcast(t, x_t)


def velocity_from_eps(x_t: Tensor, eps: Tensor, t: TimeLike) -> Tensor:
    """Rectified flow: ``v = (eps - x_t) / (1 - t)``."""
    return (eps - x_t) / (1 - _bcast(t, x_t))

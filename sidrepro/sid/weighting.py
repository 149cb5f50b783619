"""Per-sample weights ``w(t)`` of the generator loss (spec §4.4). Computed without gradient, in at least fp32."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_WEIGHTING = "1_minus_sigma"
_FLOOR = 1e-5  # denominators are clipped below at this value before inversion


def _one_minus_sigma(t: Tensor) -> Tensor:
    return 1 - t


def _one_minus_sigma_squared(t: Tensor) -> Tensor:
    return (1 - t) ** 2


def _one_over_sigma(t: Tensor) -> Tensor:
    return 1 / t.clamp_min(_FLOOR)


def _one_over_sigma2(t: Tensor) -> Tensor:
    return 1 / (t**2).clamp_min(_FLOOR)


def _snr_sqrt(t: Tensor) -> Tensor:
    return 1 / (t / (1 - t)).clamp_min(_FLOOR)


def _snr(t: Tensor) -> Tensor:
    return 1 / ((t / (1 - t)) ** 2).clamp_min(_FLOOR)


_TIME_WEIGHTS = {
    "1_minus_sigma": _one_minus_sigma,
    "1_minus_sigma_squared": _one_minus_sigma_squared,
    "1_over_sigma": _one_over_sigma,
    "1_over_sigma2": _one_over_sigma2,
    "snr_sqrt": _snr_sqrt,
    "snr": _snr,
}
WEIGHTINGS: tuple[str, ...] = (*_TIME_WEIGHTS, "sid_legacy")


def check_weighting(scheme: str) -> str:
    """Return ``scheme`` if it is a known weighting, else raise an error listing the valid ones."""
    if scheme not in WEIGHTINGS:
        hint = " (the original SiD normaliser is spelled 'sid_legacy')" if "sid" in str(scheme) else ""
        raise ValueError(f"unknown weighting scheme {scheme!r}{hint}; choose one of {', '.join(WEIGHTINGS)}")
    return scheme


@torch.no_grad()
def loss_weight(scheme: str, t: Tensor, *, x_g: Tensor | None = None, f_real: Tensor | None = None) -> Tensor:
    """Weight per sample, shape ``(B,)``, for flow time ``t`` ``(B,)`` (sigma = t).

    ``sid_legacy`` is SiD's original normaliser ``1 / max(mean |x_g - f_real|, 1e-5)`` and needs both tensors.
    """
    check_weighting(scheme)
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    if scheme != "sid_legacy":
        return _TIME_WEIGHTS[scheme](t)
    if x_g is None or f_real is None:
        raise ValueError("weighting 'sid_legacy' needs x_g and f_real (it normalises by mean |x_g - f_real|)")
    dtype = torch.promote_types(x_g.dtype, torch.float32)
    diff = (x_g.to(dtype) - f_real.to(dtype)).abs().flatten(1).mean(dim=1)
    return 1 / diff.clamp_min(_FLOOR)

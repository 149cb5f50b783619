"""The distillation time law: ``t = sigmoid(n)``, ``n ~ N(ln 2, 1.6^2)``, per sample, never shifted or clipped."""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIME_MEAN = math.log(2.0)
TIME_STD = 1.6


def sample_time(
    batch: int,
    *,
    generator: torch.Generator | None = None,
    mean: float = TIME_MEAN,
    std: float = TIME_STD,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``batch`` flow times from the logit-normal law used by both SiD losses (median ``sigmoid(mean)``)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if device is None and generator is not None:
        device = generator.device
    n = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
    return torch.sigmoid(mean + std * n).to(dtype)

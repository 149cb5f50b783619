"""Classifier-free guidance in velocity space (spec §1.2), with the usual single-pass shortcuts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def cfg(v_uncond: Tensor, v_cond: Tensor, scale: float) -> Tensor:
    """``v_uncond + scale * (v_cond - v_uncond)``; scale 1 is the conditional output, 0 the unconditional one."""
    return v_uncond + scale * (v_cond - v_uncond)


def concat_conditions(a: Any, b: Any) -> Any:
    """Batch-concatenate two conditionings of the same structure (tensors, or dicts/tuples/lists of them)."""
    if torch.is_tensor(a):
        return torch.cat([a, b], dim=0)
    if isinstance(a, Mapping):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    if isinstance(a, Sequence) and not isinstance(a, str):
        return type(a)(concat_conditions(x, y) for x, y in zip(a, b, strict=True))
    if a is None and b is None:
        return None
    raise TypeError(f"cannot batch a conditioning of type {type(a).__name__}")


def guided_velocity(
    velocity_fn: Callable[[Tensor, Tensor, Any], Tensor],
    x_t: Tensor,
    t: Tensor,
    cond: Any,
    uncond: Any,
    scale: float,
) -> Tensor:
    """Velocity under CFG with one network call.

    ``scale == 1`` runs only the conditional pass and ``scale == 0`` only the unconditional one; anything else
    runs one batched pass of size ``2B`` with the unconditional half first, as the official code does.
    """
    if scale == 1:
        return velocity_fn(x_t, t, cond)
    if scale == 0:
        return velocity_fn(x_t, t, uncond)
    v = velocity_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), concat_conditions(uncond, cond))
    v_uncond, v_cond = v.chunk(2)
    return cfg(v_uncond, v_cond, scale)

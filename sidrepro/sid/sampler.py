"""The few-step generator sampler (spec §2): predict x0, re-noise to the next time on a fixed grid, repeat."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from ..flow import x0_from_velocity

NOISE_TYPES = ("fresh", "fixed", "ddim")
VelocityFn = Callable[[Tensor, Tensor], Tensor]


def step_times(num_steps: int = 4, init_timestep: int = 999) -> list[float]:
    """Step times ``t_i = (init_timestep / 999) (1 - i / num_steps)``, ``i = 0 .. num_steps - 1``.

    With the defaults: ``[1.0, 0.75, 0.5, 0.25]``; the first input is pure noise.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < init_timestep <= 999:
        raise ValueError(f"init_timestep must be in (0, 999], got {init_timestep!r} (999 starts from pure noise)")
    return [(init_timestep / 999) * (1 - i / num_steps) for i in range(num_steps)]


def batch_time(t: float, z: Tensor) -> Tensor:
    """Flow time ``t`` for every row of ``z``, ``(B,)``, in fp32 (fp64 for fp64 latents) whatever ``z``'s dtype:
    the trainer draws its times in fp32, and bf16 would move them (0.999 to 1, 0.6006 to 0.6016)."""
    return torch.full((z.shape[0],), t, device=z.device, dtype=torch.promote_types(z.dtype, torch.float32))


def check_noise(noise: str) -> str:
    """Return ``noise`` if it is a known noise type, else raise an error listing them."""
    if noise not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {noise!r}; choose one of {', '.join(NOISE_TYPES)}")
    return noise


def generate(
    velocity_fn: VelocityFn,
    z: Tensor,
    steps: int,
    *,
    num_steps: int = 4,
    init_timestep: int = 999,
    noise: str = "fresh",
    grad_last: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``steps`` (K) steps of the ``num_steps`` (N) grid from noise ``z`` and return the final x0 prediction.

    ``velocity_fn(x_t, t)`` is the generator with its conditioning bound, ``t`` a ``(B,)`` fp32 tensor. K < N stops
    early on the N-step grid; it never re-spaces it. Steps before the last always run without gradient; the
    last carries gradient only when ``grad_last`` is set (the generator phase). ``noise`` picks what is
    injected at step i >= 1: ``fresh`` a new draw (from ``generator``), ``fixed`` ``z`` again, ``ddim`` the eps
    implied by the previous step.
    """
    times = step_times(num_steps, init_timestep)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps (K) must be an integer in [1, num_steps={num_steps}], got {steps!r}")
    check_noise(noise)
    x0 = torch.zeros_like(z)
    x_prev = t_prev = None
    for i in range(steps):
        t_i = times[i]
        if i == 0:
            n = z
        elif noise == "fresh":
            n = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        elif noise == "fixed":
            n = z
        else:  # ddim: the noise implied by the previous input and the current x0 estimate
            n = (x_prev - (1 - t_prev) * x0) / t_prev
        x_t = ((1 - t_i) * x0 + t_i * n).detach()
        t = batch_time(t_i, z)
        last = i == steps - 1
        with nullcontext() if (last and grad_last) else torch.no_grad():
            x0 = x0_from_velocity(x_t, velocity_fn(x_t, t), t)
        x_prev, t_prev = x_t, t_i
    return x0

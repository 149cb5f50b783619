"""The two SiD losses, per sample (spec §3.2, §4.2). Scales (``ls``, ``lsg``), the ``1 / B_rank`` normalisation
and accumulation belong to the caller."""

from __future__ import annotations

import torch
from torch import Tensor

from .weighting import DEFAULT_WEIGHTING, loss_weight


def _sum_per_sample(x: Tensor) -> Tensor:
    """Sum over non-batch dims, accumulated in at least fp32 (bf16 products are promoted, fp64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)).flatten(1).sum(dim=1)


def generator_loss(
    x_g: Tensor,
    f_real: Tensor,
    f_fake: Tensor,
    t: Tensor,
    *,
    alpha: float = 1.0,
    scheme: str = DEFAULT_WEIGHTING,
) -> Tensor:
    """SiD generator loss per sample, shape ``(B,)``:

    ``w(t) * sum((f_real - f_fake) * ((f_real - x_g) - alpha * (f_real - f_fake)))`` over non-batch dims.

    ``f_real``/``f_fake`` are the teacher's and the fake network's x0 predictions at ``x_t`` built from ``x_g``.
    Nothing is detached here: the gradient reaches ``x_g`` through ``f_real``, ``f_fake`` and ``x_g`` itself,
    which is what separates SiD from a DMD-style stop-gradient loss. Only ``w(t)`` carries no gradient.
    """
    w = loss_weight(scheme, t, x_g=x_g, f_real=f_real)
    diff = f_real - f_fake
    per = _sum_per_sample(diff * ((f_real - x_g) - alpha * diff))
    return w.to(per) * per


def fake_score_loss(v_fake: Tensor, x_g: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching loss of the fake network on generator samples, per sample: ``sum((v_fake - (eps - x_g))^2)``.

    A sum over elements (not a mean) and no time weighting, as in the official code.
    """
    return _sum_per_sample((v_fake - (eps - x_g)) ** 2)


def finite_sum(per_sample: Tensor) -> Tensor:
    """Sum of a per-sample loss over the samples whose value is finite (NaN/inf samples are dropped).

    Right for the value only: to backpropagate, mask the loss's inputs with ``drop_samples`` and sum with
    ``kept_sum`` (see ``drop_samples``)."""
    keep = per_sample.isfinite()
    return per_sample.where(keep, per_sample.new_zeros(())).sum()


def finite_samples(*tensors: Tensor | None) -> Tensor:
    """``(B,)`` bool: True for the samples whose elements are all finite in every given tensor (``None`` skipped).
    NaN and +-inf both count as non-finite."""
    keep = None
    for x in tensors:
        if x is None:
            continue
        k = x.detach().flatten(1).isfinite().all(dim=1) if x.dim() > 1 else x.detach().isfinite()
        keep = k if keep is None else keep & k
    if keep is None:
        raise ValueError("finite_samples needs at least one tensor")
    return keep


def drop_samples(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` with the rows of the dropped samples (``keep`` False) replaced by zeros.

    Applied to a loss's inputs before the loss is computed. Masking only the per-sample loss is not enough: its
    backward multiplies the zero gradient of a dropped sample by that sample's NaN values (``0 * NaN = NaN``).
    ``torch.where`` (not a product with the mask) passes an exact zero gradient to the dropped rows."""
    return torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, x.new_zeros(()))


def kept_sum(per_sample: Tensor, keep: Tensor) -> Tensor:
    """Sum of a per-sample loss over the kept samples (dropped ones contribute exactly zero)."""
    return torch.where(keep, per_sample, per_sample.new_zeros(())).sum()

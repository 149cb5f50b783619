"""The data-aided (Diffusion-GAN) terms of spec §6, as pure functions on discriminator logits.

The discriminator is the fake-score network itself: its pooled features before the output projection are a
vector of ``D`` independent logits per sample. ``num_elements`` (the latent's C*H*W) puts the losses on the scale
of the element-summed SiD losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_CLAMP = 10.0


def _bce_mean(logits: Tensor, target: float) -> Tensor:
    logits = logits.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP).flatten(1)
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, *, num_elements: int = 1) -> Tensor:
    """Per sample: ``num_elements * 0.5 * (mean_D BCE(h_real, 1) + mean_D BCE(h_fake, 0))``. No time weight."""
    return num_elements * 0.5 * (_bce_mean(logits_real, 1.0) + _bce_mean(logits_fake, 0.0))


def generator_adversarial_loss(logits_fake: Tensor, weight: Tensor, *, num_elements: int = 1) -> Tensor:
    """Non-saturating generator loss per sample: ``num_elements * w(t) * mean_D BCE(h(x_t from x_g), 1)``."""
    return num_elements * weight.to(logits_fake.device).float() * _bce_mean(logits_fake, 1.0)


@dataclass(frozen=True)
class AdversarialSchedule:
    """When the generator learns in the data-aided setting (spec §6.3), by images seen (``nimg``).

    Up to ``freeze_nimg`` only the fake network/discriminator learn; up to ``mix_nimg`` the generator uses the
    SiD loss alone; afterwards ``(1 - adv_weight) * L_sid + adv_weight * L_adv``.
    """

    freeze_nimg: int = 20_000
    mix_nimg: int = 40_000
    adv_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_nimg <= self.mix_nimg:
            raise ValueError(f"need 0 <= freeze_nimg <= mix_nimg, got {self.freeze_nimg}, {self.mix_nimg}")
        if not 0 <= self.adv_weight <= 1:
            raise ValueError(f"adv_weight must be in [0, 1], got {self.adv_weight}")

    def generator_steps(self, nimg: int) -> bool:
        """Whether the generator's optimiser steps at this image count."""
        return nimg > self.freeze_nimg

    def adversarial_fraction(self, nimg: int) -> float:
        """Weight of ``L_adv`` in the generator loss at this image count (0 before ``mix_nimg``)."""
        return self.adv_weight if nimg > self.mix_nimg else 0.0

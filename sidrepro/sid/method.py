"""The two SiD phases of one training iteration (spec §13), for any networks behind two small protocols.

The method owns its losses and their scales; whoever calls it owns optimisers, ``requires_grad`` toggling,
division by the per-rank batch, accumulation and devices. The Gaussian-mixture toy and the DiT trainer call the
same two functions, so the toy's verdict on the method carries over.

Non-finite samples are dropped from a phase's loss, as the official code does: a sample whose generator output,
network outputs, target or discriminator logits hold a NaN or inf contributes exactly zero, to the loss and to the
gradients that flow back through the loss (its rows are zeroed before the loss is formed). The caller still divides
by the full per-rank batch, not by the kept count. ``stats`` report how many samples each phase dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..flow import interpolate, x0_from_velocity
from .adversarial import LOGIT_CLAMP, AdversarialSchedule, discriminator_loss, generator_adversarial_loss
from .losses import drop_samples, fake_score_loss, finite_samples, generator_loss, kept_sum
from .sampler import VelocityFn, check_noise, generate, step_times
from .time_law import TIME_MEAN, TIME_STD, sample_time
from .weighting import DEFAULT_WEIGHTING, check_weighting, loss_weight


class ScoreNet(Protocol):
    """A velocity network with its conditioning bound: teacher or fake network.

    Returns the CFG-guided velocity at ``scale`` and, when ``features`` is set, the pooled discriminator logits
    ``(B, D)`` of the conditional pass (``None`` otherwise).
    """

    def __call__(
        self, x_t: Tensor, t: Tensor, *, scale: float = 1.0, features: bool = False
    ) -> tuple[Tensor, Tensor | None]: ...


@dataclass(frozen=True)
class SiDConfig:
    """Hyper-parameters of the method; the defaults are the official code's (spec §10)."""

    num_steps: int = 4
    init_timestep: int = 999
    noise: str = "fresh"
    alpha: float = 1.0
    weighting: str = DEFAULT_WEIGHTING
    cfg_train_fake: float = 1.0  # kappa_1: fake net in its own loss (and the fake discriminator pass)
    cfg_eval_fake: float = 1.0  # kappa_2: fake net inside the generator loss
    cfg_eval_real: float = 1.0  # kappa_4: teacher inside the generator loss
    ls: float = 1.0
    lsg: float = 100.0
    lsd: float = 1.0
    lsg_gan: float = 1.0
    time_mean: float = TIME_MEAN
    time_std: float = TIME_STD

    def __post_init__(self) -> None:
        step_times(self.num_steps, self.init_timestep)
        check_noise(self.noise)
        check_weighting(self.weighting)
        if not self.alpha > -1000:
            raise ValueError(f"alpha must be > -1000, got {self.alpha}")


@dataclass
class PhaseOutput:
    """``loss``: the phase's scaled loss summed over the micro-batch's kept samples (divide by the per-rank batch
    before backward). ``stats``: detached per-sample means over the kept samples (NaN when none was kept),
    ``dropped_fake``/``dropped_gen`` (samples dropped as non-finite) and ``nonfinite_loss`` (1 when the summed loss
    itself is not finite, e.g. an overflow). ``x_g``: the generator samples used."""

    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)
    x_g: Tensor | None = None


def _mean(x: Tensor, keep: Tensor) -> float:
    """Mean of a per-sample quantity over the kept samples (NaN if none)."""
    x = x.detach()[keep]
    return float(x.mean()) if x.numel() else float("nan")


def _drop_stats(name: str, keep: Tensor, loss: Tensor) -> dict[str, float]:
    return {name: float((~keep).sum()), "nonfinite_loss": float(not bool(loss.detach().isfinite()))}


class SiD:
    """Score identity Distillation: a fake-score phase and a generator phase per iteration."""

    def __init__(self, config: SiDConfig, adversarial: AdversarialSchedule | None = None):
        self.config = config
        self.adversarial = adversarial

    # --- randomness the caller can seed ------------------------------------------------------------------
    def sample_steps(self, generator: torch.Generator | None = None) -> int:
        """K ~ U{1..N}: one draw per iteration, shared by both phases (and, in a trainer, by every rank)."""
        return int(torch.randint(1, self.config.num_steps + 1, (1,), generator=generator).item())

    def sample_time(self, batch: int, generator: torch.Generator | None = None, **kw) -> Tensor:
        return sample_time(batch, generator=generator, mean=self.config.time_mean, std=self.config.time_std, **kw)

    def generate(self, gen: VelocityFn, z: Tensor, steps: int, *, grad_last: bool = False,
                 generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        return generate(gen, z, steps, num_steps=c.num_steps, init_timestep=c.init_timestep, noise=c.noise,
                        grad_last=grad_last, generator=generator)

    def generator_steps(self, nimg: int) -> bool:
        """Whether the generator's optimiser should step at ``nimg`` images seen."""
        return self.adversarial is None or self.adversarial.generator_steps(nimg)

    # --- phase 1: fake score network (and discriminator) -------------------------------------------------
    def fake_phase(
        self,
        gen: VelocityFn,
        fake: ScoreNet,
        z: Tensor,
        eps: Tensor,
        t: Tensor,
        steps: int,
        *,
        noise_generator: torch.Generator | None = None,
        real_x0: Tensor | None = None,
        fake_on_real: ScoreNet | None = None,
    ) -> PhaseOutput:
        """Fake-score loss on fresh generator samples; with ``real_x0`` and ``fake_on_real`` (the fake net bound
        to the real captions) the discriminator loss is added, real latents noised with the same ``t``, ``eps``."""
        c = self.config
        aided = real_x0 is not None
        if aided and fake_on_real is None:
            raise ValueError("the data-aided fake phase needs fake_on_real (the fake net on real captions)")
        x_g = self.generate(gen, z, steps, generator=noise_generator).detach()
        # A non-finite sample is zeroed before the fake network sees it, so that its NaN stays out of the fake
        # network's forward (and so out of its parameter gradients) as well as out of the loss.
        keep = finite_samples(x_g, real_x0)
        x_g = drop_samples(x_g, keep)
        v_fake, h_fake = fake(interpolate(x_g, eps, t), t, scale=c.cfg_train_fake, features=aided)
        h_real = None
        if aided:
            real_x0 = drop_samples(real_x0, keep)
            eps_r = eps if eps.shape == real_x0.shape else torch.randn_like(real_x0)
            _, h_real = fake_on_real(interpolate(real_x0, eps_r, t), t, scale=1.0, features=True)
        keep = keep & finite_samples(v_fake, eps, h_fake, h_real)
        per = fake_score_loss(drop_samples(v_fake, keep), x_g, drop_samples(eps, keep))
        per_d = None
        if aided:
            per_d = discriminator_loss(drop_samples(h_real, keep), drop_samples(h_fake, keep),
                                       num_elements=x_g[0].numel())
        keep = keep & finite_samples(per, per_d)  # an overflow in a sample's sum drops it too
        loss = c.ls * kept_sum(per, keep)
        stats = {"loss_fake": _mean(per, keep)}
        if aided:
            loss = loss + c.lsd * kept_sum(per_d, keep)
            stats["loss_disc"] = _mean(per_d, keep)
            stats["d_real"] = _mean(torch.sigmoid(h_real.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)).mean(1), keep)
            stats["d_fake"] = _mean(torch.sigmoid(h_fake.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)).mean(1), keep)
        stats.update(_drop_stats("dropped_fake", keep, loss))
        return PhaseOutput(loss, stats, x_g)

    # --- phase 2: generator ------------------------------------------------------------------------------
    def generator_phase(
        self,
        gen: VelocityFn,
        teacher: ScoreNet,
        fake: ScoreNet,
        z: Tensor,
        eps: Tensor,
        t: Tensor,
        steps: int,
        *,
        nimg: int = 0,
        noise_generator: torch.Generator | None = None,
    ) -> PhaseOutput:
        """SiD generator loss (gradient through the last generator step only), mixed with the adversarial loss
        once the schedule says so. The fake network's parameters must be frozen by the caller."""
        c = self.config
        x_g = self.generate(gen, z, steps, grad_last=True, generator=noise_generator)
        keep = finite_samples(x_g)
        x_g = drop_samples(x_g, keep)  # teacher and fake network never see a non-finite sample
        x_t = interpolate(x_g, eps, t)
        adv = self.adversarial.adversarial_fraction(nimg) if self.adversarial is not None else 0.0
        v_real, _ = teacher(x_t, t, scale=c.cfg_eval_real)
        v_fake, h_fake = fake(x_t, t, scale=c.cfg_eval_fake, features=adv > 0)
        f_real = x0_from_velocity(x_t, v_real, t)
        f_fake = x0_from_velocity(x_t, v_fake, t)
        keep = keep & finite_samples(f_real, f_fake, h_fake if adv > 0 else None)
        x_g, f_real, f_fake = (drop_samples(x, keep) for x in (x_g, f_real, f_fake))
        per = generator_loss(x_g, f_real, f_fake, t, alpha=c.alpha, scheme=c.weighting)
        per_adv = None
        if adv > 0:
            w = loss_weight(c.weighting, t, x_g=x_g, f_real=f_real)
            per_adv = generator_adversarial_loss(drop_samples(h_fake, keep), w, num_elements=x_g[0].numel())
        keep = keep & finite_samples(per, per_adv)  # an overflow in a sample's sum drops it too
        loss = c.lsg * kept_sum(per, keep)
        stats = {"loss_sid": _mean(per, keep)}
        if adv > 0:
            loss = (1 - adv) * loss + adv * c.lsg_gan * kept_sum(per_adv, keep)
            stats["loss_adv"] = _mean(per_adv, keep)
        stats.update(_drop_stats("dropped_gen", keep, loss))
        return PhaseOutput(loss, stats, x_g)

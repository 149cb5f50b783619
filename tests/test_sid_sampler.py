"""Step grid, few-step sampler, CFG and the adversarial terms."""

import pytest
import torch
import torch.nn.functional as F

from sidrepro.sid import (
    AdversarialSchedule,
    cfg,
    discriminator_loss,
    generate,
    generator_adversarial_loss,
    guided_velocity,
    step_times,
)


def test_step_grid():
    assert step_times() == [1.0, 0.75, 0.5, 0.25]
    assert step_times(1) == [1.0]
    assert step_times(2, 500) == pytest.approx([500 / 999, 250 / 999])


@pytest.mark.parametrize(("kw", "match"), [
    ({"num_steps": 0}, "num_steps"), ({"num_steps": -3}, "num_steps"), ({"num_steps": 2.5}, "num_steps"),
    ({"init_timestep": 0}, "init_timestep"), ({"init_timestep": 1000}, "init_timestep"),
])
def test_step_grid_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        step_times(**kw)


class Recorder:
    """A velocity function that records its inputs and returns a fixed linear map of x."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone(), torch.is_grad_enabled()))
        return 0.3 * x + t[:, None]


def test_k_of_n_keeps_the_n_step_grid_and_first_input_is_noise():
    z = torch.randn(3, 2)
    rec = Recorder()
    generate(rec, z, 2, num_steps=4, noise="fixed")
    assert [float(c[1][0]) for c in rec.calls] == [1.0, 0.75]
    torch.testing.assert_close(rec.calls[0][0], z)


@pytest.mark.parametrize(("steps", "num_steps"), [(5, 4), (0, 4), (-1, 4)])
def test_bad_step_counts(steps, num_steps):
    with pytest.raises(ValueError, match=r"steps \(K\)"):
        generate(Recorder(), torch.randn(2, 2), steps, num_steps=num_steps)


def test_unknown_noise_type():
    with pytest.raises(ValueError, match="fresh, fixed, ddim"):
        generate(Recorder(), torch.randn(2, 2), 2, noise="ode")


def _manual(z, noise, fresh):
    """The spec's procedure written out for the Recorder map, independently of the library loop."""
    ts = [1.0, 0.75, 0.5, 0.25]
    x0 = torch.zeros_like(z)
    prev = None
    for i, t in enumerate(ts):
        if i == 0 or noise == "fixed":
            n = z
        elif noise == "fresh":
            n = fresh[i - 1]
        else:
            x_prev, t_prev = prev
            n = (x_prev - (1 - t_prev) * x0) / t_prev
        x_t = (1 - t) * x0 + t * n
        v = 0.3 * x_t + t
        x0 = x_t - t * v
        prev = (x_t, t)
    return x0


@pytest.mark.parametrize("noise", ["fresh", "fixed", "ddim"])
def test_sampler_follows_the_spec_procedure(noise):
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    out = generate(Recorder(), z, 4, noise=noise, generator=g)
    g = torch.Generator().manual_seed(7)
    fresh = [torch.randn(z.shape, generator=g) for _ in range(3)]
    torch.testing.assert_close(out, _manual(z, noise, fresh))


def test_ddim_noise_is_the_previous_steps_implied_eps():
    z = torch.randn(4, 3)
    rec = Recorder()
    generate(rec, z, 2, noise="ddim")
    (x0_in, t0, _), (x1_in, _t1, _) = rec.calls
    v0 = 0.3 * x0_in + t0[:, None]
    eps_hat = x0_in + (1 - t0[:, None]) * v0  # rectified-flow eps from velocity
    x0_hat = x0_in - t0[:, None] * v0
    torch.testing.assert_close(x1_in, (1 - 0.75) * x0_hat + 0.75 * eps_hat)


def test_only_the_last_step_carries_gradient():
    w = torch.tensor(0.3, requires_grad=True)
    seen = []

    def vel(x, t):
        seen.append(torch.is_grad_enabled())
        return w * x + t[:, None]

    out = generate(vel, torch.randn(2, 2), 3, grad_last=True)
    assert seen == [False, False, True]
    out.sum().backward()
    assert w.grad is not None
    seen.clear()
    assert not generate(vel, torch.randn(2, 2), 3).requires_grad and seen == [False, False, False]


def test_cfg_and_guided_velocity_passes():
    vu, vc = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(cfg(vu, vc, 4.5), vu + 4.5 * (vc - vu))
    torch.testing.assert_close(cfg(vu, vc, 1.0), vc)
    calls = []

    def net(x, t, c):
        calls.append(c["emb"].shape[0])
        return x * c["emb"][:, :1] + t[:, None]

    x, t = torch.randn(2, 3), torch.rand(2)
    cond, uncond = {"emb": torch.full((2, 4), 2.0)}, {"emb": torch.full((2, 4), -1.0)}
    torch.testing.assert_close(guided_velocity(net, x, t, cond, uncond, 1.0), net(x, t, cond))
    torch.testing.assert_close(guided_velocity(net, x, t, cond, uncond, 0.0), net(x, t, uncond))
    calls.clear()
    out = guided_velocity(net, x, t, cond, uncond, 3.0)
    assert calls == [4]  # one batched pass of size 2B
    torch.testing.assert_close(out, cfg(net(x, t, uncond), net(x, t, cond), 3.0))


def test_adversarial_losses_on_logits():
    h_real, h_fake = torch.randn(3, 7), torch.randn(3, 7)
    want = 0.5 * (F.binary_cross_entropy_with_logits(h_real, torch.ones_like(h_real), reduction="none").mean(1)
                  + F.binary_cross_entropy_with_logits(h_fake, torch.zeros_like(h_fake), reduction="none").mean(1))
    torch.testing.assert_close(discriminator_loss(h_real, h_fake, num_elements=16), 16 * want)
    w = torch.tensor([0.1, 0.5, 1.0])
    bce1 = F.binary_cross_entropy_with_logits(h_fake, torch.ones_like(h_fake), reduction="none").mean(1)
    torch.testing.assert_close(generator_adversarial_loss(h_fake, w, num_elements=4), 4 * w * bce1)
    # logits are clamped to [-10, 10]: a confident wrong logit costs at most BCE(10)
    huge = discriminator_loss(torch.full((1, 2), -1e4), torch.zeros(1, 2))
    assert float(huge) == pytest.approx(0.5 * (10 + torch.log1p(torch.exp(torch.tensor(-10.0))).item()
                                               + torch.log(torch.tensor(2.0)).item()), rel=1e-5)


def test_adversarial_schedule():
    s = AdversarialSchedule()
    assert not s.generator_steps(0) and not s.generator_steps(20_000) and s.generator_steps(20_001)
    assert s.adversarial_fraction(40_000) == 0.0 and s.adversarial_fraction(40_001) == 0.5
    with pytest.raises(ValueError):
        AdversarialSchedule(freeze_nimg=50_000, mix_nimg=40_000)

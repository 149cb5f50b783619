"""The SiD losses, weights and time law against the spec's formulas, and the generator-loss gradient against
finite differences through real networks."""

import math

import pytest
import torch
from torch import nn

from sidrepro.flow import interpolate, x0_from_velocity
from sidrepro.sid import (
    WEIGHTINGS,
    fake_score_loss,
    finite_sum,
    generator_loss,
    loss_weight,
    sample_time,
)


def test_time_law_is_logit_normal_ln2_1p6():
    t = sample_time(200_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (200_000,) and bool(((t > 0) & (t < 1)).all())
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean()) - math.log(2)) < 0.02
    assert abs(float(logit.std()) - 1.6) < 0.02
    assert abs(float(t.median()) - 2 / 3) < 0.01
    a = sample_time(8, generator=torch.Generator().manual_seed(3))
    b = sample_time(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="std"):
        sample_time(4, std=0)


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("1_minus_sigma", lambda t: 1 - t),
        ("1_minus_sigma_squared", lambda t: (1 - t) ** 2),
        ("1_over_sigma", lambda t: 1 / t),
        ("1_over_sigma2", lambda t: 1 / t**2),
        ("snr_sqrt", lambda t: (1 - t) / t),
        ("snr", lambda t: ((1 - t) / t) ** 2),
    ],
)
def test_time_weightings(scheme, expected):
    t = torch.tensor([0.05, 0.3, 0.5, 0.9])
    torch.testing.assert_close(loss_weight(scheme, t), expected(t))


def test_weighting_floor_and_legacy():
    t = torch.tensor([1e-7, 1.0])
    assert float(loss_weight("1_over_sigma", t)[0]) == pytest.approx(1e5)
    assert float(loss_weight("snr_sqrt", t)[1]) == 0.0
    x_g = torch.zeros(2, 3, 2)
    f_real = torch.stack([torch.full((3, 2), 0.5), torch.zeros(3, 2)])
    w = loss_weight("sid_legacy", torch.rand(2), x_g=x_g, f_real=f_real)
    torch.testing.assert_close(w, torch.tensor([2.0, 1e5]))
    with pytest.raises(ValueError, match="needs x_g and f_real"):
        loss_weight("sid_legacy", torch.rand(2))


@pytest.mark.parametrize("bad", ["sid_default", "uniform", "1-minus-sigma"])
def test_unknown_weighting_names_the_choices(bad):
    with pytest.raises(ValueError) as err:
        loss_weight(bad, torch.rand(3))
    for name in WEIGHTINGS:
        assert name in str(err.value)


def test_generator_loss_formula_and_alpha_one_identity():
    g = torch.Generator().manual_seed(0)
    x_g, f_r, f_f = (torch.randn(5, 4, 3, generator=g) for _ in range(3))
    t = torch.rand(5, generator=g)
    for alpha in (1.0, 0.5, -2.0):
        want = (1 - t) * ((f_r - f_f) * ((f_r - x_g) - alpha * (f_r - f_f))).sum((1, 2))
        torch.testing.assert_close(generator_loss(x_g, f_r, f_f, t, alpha=alpha), want)
    # alpha = 1: the official code's simplified form (f_real - f_fake) . (f_fake - x_g)
    torch.testing.assert_close(generator_loss(x_g, f_r, f_f, t), (1 - t) * ((f_r - f_f) * (f_f - x_g)).sum((1, 2)))


def test_fake_score_loss_is_an_element_sum():
    v, x_g, eps = torch.randn(3, 2, 2), torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    torch.testing.assert_close(fake_score_loss(v, x_g, eps), ((v - (eps - x_g)) ** 2).sum((1, 2)))


def test_finite_sum_drops_nan_samples():
    assert float(finite_sum(torch.tensor([1.0, float("nan"), 2.0, float("inf")]))) == 3.0


class _Net(nn.Module):
    """A small smooth velocity network (frozen), standing in for teacher or fake network."""

    def __init__(self, dim, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.f = nn.Sequential(nn.Linear(dim + 1, 32), nn.Tanh(), nn.Linear(32, dim))
        self.double().requires_grad_(False)

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None]], 1))


def _sid_total(x_g, eps, t, teacher, fake, detach):
    x_t = interpolate(x_g, eps, t)
    f_real = x0_from_velocity(x_t, teacher(x_t, t), t)
    f_fake = x0_from_velocity(x_t, fake(x_t, t), t)
    if detach:  # a DMD-style stop-gradient: what SiD must not do
        f_real, f_fake = f_real.detach(), f_fake.detach()
    return generator_loss(x_g, f_real, f_fake, t, alpha=1.2).sum()


def test_generator_loss_gradient_matches_finite_differences_through_both_networks():
    dim = 3
    teacher, fake = _Net(dim, 1), _Net(dim, 2)
    g = torch.Generator().manual_seed(0)
    x_g = torch.randn(4, dim, generator=g, dtype=torch.float64)
    eps = torch.randn(4, dim, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64) * 0.8 + 0.1

    def numeric():
        grad, h = torch.zeros_like(x_g), 1e-6
        for idx in torch.cartesian_prod(torch.arange(4), torch.arange(dim)):
            e = torch.zeros_like(x_g)
            e[tuple(idx)] = h
            grad[tuple(idx)] = (_sid_total(x_g + e, eps, t, teacher, fake, False)
                                - _sid_total(x_g - e, eps, t, teacher, fake, False)) / (2 * h)
        return grad

    fd = numeric()
    for detach, should_match in ((False, True), (True, False)):
        x = x_g.clone().requires_grad_(True)
        _sid_total(x, eps, t, teacher, fake, detach).backward()
        close = torch.allclose(x.grad, fd, rtol=1e-5, atol=1e-7)
        assert close == should_match, f"detach={detach}: autograd {'!=' if should_match else '=='} finite diff"
    # And the loss genuinely depends on both networks: changing either one changes the gradient.
    x = x_g.clone().requires_grad_(True)
    _sid_total(x, eps, t, teacher, _Net(dim, 3), False).backward()
    assert not torch.allclose(x.grad, fd, rtol=1e-3)

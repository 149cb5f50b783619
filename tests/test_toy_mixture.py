"""The Gaussian-mixture world: determinism, and its closed-form velocity against independent computations."""

import math

import pytest
import torch

from sidrepro.flow import interpolate
from sidrepro.toy.metrics import (
    EnergyReference,
    SlicedEnergyReference,
    energy_distance,
    energy_distance_u,
    mode_weight_error,
    sliced_w2,
    within_mean,
)
from sidrepro.toy.mixture import GaussianMixture, WorldSpec, make_world


def test_world_is_a_function_of_its_spec():
    a, b = make_world(WorldSpec(seed=3)), make_world(WorldSpec(seed=3))
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.covs, b.covs)
    torch.testing.assert_close(a.weights, b.weights)
    assert not torch.allclose(a.means, make_world(WorldSpec(seed=4)).means)
    x, _ = make_world(WorldSpec(dim=16, modes=10)).sample(50_000, torch.Generator().manual_seed(0))
    assert abs(float(x.var(0).mean()) - 1) < 0.05  # unit variance per axis on average


@pytest.mark.parametrize(("kw", "match"), [
    ({"dim": 0}, "dim"), ({"modes": -1}, "modes"), ({"dim": 2.5}, "dim"), ({"min_std": 0.3, "max_std": 0.1}, "min_std"),
])
def test_malformed_world_options(kw, match):
    with pytest.raises(ValueError, match=match):
        WorldSpec(**kw)


def test_impossible_world_says_how_to_fix_it():
    with pytest.raises(ValueError, match="raise mean_scale"):
        make_world(WorldSpec(dim=1, modes=30, max_std=0.5))


def test_single_component_posterior_is_gaussian_conditioning():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 3, generator=g, dtype=torch.float64)
    a_ = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = (a_ @ a_.T / 3 + 0.1 * torch.eye(3, dtype=torch.float64))[None]
    m = GaussianMixture(torch.ones(1), mu, cov)
    x_t = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    got = m.posterior_x0(x_t, t)
    for i in range(6):
        a, s = 1 - t[i], t[i]
        c = a * a * cov[0] + s * s * torch.eye(3, dtype=torch.float64)
        torch.testing.assert_close(got[i], mu[0] + a * cov[0] @ torch.linalg.solve(c, x_t[i] - a * mu[0]))


def test_mixture_posterior_matches_monte_carlo_bayes():
    """E[x0 | x_t] by self-normalised importance sampling over data samples (Bayes' rule by brute force)."""
    world = make_world(WorldSpec(dim=2, modes=8, seed=1))
    g = torch.Generator().manual_seed(1)
    x0, _ = world.sample(400_000, g)
    x0 = x0.double()
    for t in (0.3, 0.6, 0.9):
        probe = interpolate(world.sample(4, g)[0].double(), torch.randn(4, 2, generator=g, dtype=torch.float64), t)
        a, s = 1 - t, t
        logw = -((probe[:, None, :] - a * x0[None]) ** 2).sum(-1) / (2 * s * s)
        mc = (torch.softmax(logw, dim=1)[..., None] * x0[None]).sum(1)
        exact = world.posterior_x0(probe, torch.full((4,), t, dtype=torch.float64))
        torch.testing.assert_close(exact, mc, atol=0.02, rtol=0)


def test_exact_velocity_beats_perturbed_fields_on_the_flow_matching_loss():
    world = make_world(WorldSpec(dim=3, modes=4, seed=2))
    g = torch.Generator().manual_seed(0)
    x0, labels = world.sample(100_000, g)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.rand(100_000, generator=g) * 0.98 + 0.01
    x_t = interpolate(x0, eps, t)
    target = eps - x0
    for cond in (None, labels):
        v = world.velocity(x_t, t, cond)
        base = ((v - target) ** 2).sum(1).mean()
        for delta in (0.05, -0.05):
            assert ((v * (1 + delta) - target) ** 2).sum(1).mean() > base
        assert ((v + 0.05 - target) ** 2).sum(1).mean() > base
    # conditioning on the label can only help
    def loss(v):
        return ((v - target) ** 2).sum(1).mean()

    assert loss(world.velocity(x_t, t, labels)) < loss(world.velocity(x_t, t))


def test_biased_world_and_assignment():
    world = make_world(WorldSpec())
    same = world.biased(0.0, 0)
    torch.testing.assert_close(same.means, world.means)
    off = world.biased(1.0, 0)
    assert float((off.means - world.means).norm(dim=1).mean()) == pytest.approx(0.1, rel=1e-6)
    x, labels = world.sample(5000, torch.Generator().manual_seed(0))
    assert float((world.assign(x) == labels).float().mean()) > 0.99
    tv, freq = mode_weight_error(x, world)
    assert tv < 0.03 and math.isclose(sum(freq), 1.0)


def test_distances_have_a_known_zero_and_see_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 2, generator=g), torch.randn(4000, 2, generator=g)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert sliced_w2(x, x) == 0.0
    floor = energy_distance(x, y)
    assert energy_distance(x, y + 0.3) > 10 * floor
    assert sliced_w2(x, y + 0.3) > 2 * sliced_w2(x, y)
    with pytest.raises(ValueError, match="equal sample shapes"):
        sliced_w2(x, y[:10])


def test_u_statistic_is_the_v_statistic_less_its_diagonal_correction():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3000, 2, generator=g), torch.randn(2500, 2, generator=g) * 1.1  # unequal sizes, chunked
    torch.testing.assert_close(within_mean(x), float(torch.pdist(x.double()).mean()), rtol=1e-6, atol=0)
    # V counts the n zero diagonal terms in each within-sample mean: V = U + E|X-X'|/n + E|Y-Y'|/m
    correction = within_mean(x) / 3000 + within_mean(y) / 2500
    assert energy_distance(x, y) - energy_distance_u(x, y) == pytest.approx(correction, rel=1e-4)
    u, v = EnergyReference(y).distances(x)
    assert u == pytest.approx(energy_distance_u(x, y), rel=1e-6, abs=1e-9)
    assert v == pytest.approx(energy_distance(x, y), rel=1e-4)


def test_u_statistic_is_unbiased_for_equal_laws_and_positive_for_different_ones():
    g = torch.Generator().manual_seed(2)
    world = make_world(WorldSpec())
    draws = 300
    u, v, shifted = [], [], []
    for _ in range(draws):
        x, _ = world.sample(200, g)
        y, _ = world.sample(200, g)
        u.append(energy_distance_u(x, y))
        v.append(energy_distance(x, y))
        shifted.append(energy_distance_u(x + 0.1, y))
    u_t, v_t = torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)
    se = float(u_t.std()) / math.sqrt(draws)
    assert abs(float(u_t.mean())) < 3 * se  # zero in expectation
    assert float(u_t.min()) < 0  # so single draws can be negative
    assert float(v_t.mean()) > 10 * se  # the V-statistic's self-distance bias, for contrast
    assert float(torch.tensor(shifted).mean()) > 10 * se  # a shift of 0.1 is seen clearly


def test_sorted_projection_estimator_is_the_u_statistic():
    g = torch.Generator().manual_seed(3)
    # 1-D: one direction, so the sorted sums must give the pairwise U- and V-statistics exactly
    x, y = torch.randn(700, 1, generator=g), torch.randn(900, 1, generator=g) + 0.2
    exact = EnergyReference(y).distances(x)
    fast = SlicedEnergyReference(y, generator=g).distances(x)
    assert fast == pytest.approx(exact, rel=1e-5)
    # 2-D: equispaced angles with a random offset reproduce the pairwise U-statistic to a fraction of a percent
    world = make_world(WorldSpec())
    x, _ = world.sample(3000, g)
    y, _ = world.sample(3000, g)
    for shift in (0.0, 0.05):
        u = energy_distance_u(x + shift, y)
        fast_u = SlicedEnergyReference(y, directions=64, generator=g).distances(x + shift)[0]
        assert fast_u == pytest.approx(u, rel=0.01, abs=2e-6)
    # 16-D: over fresh random directions the estimate is unbiased for the pairwise U-statistic
    world = make_world(WorldSpec(dim=16, modes=10))
    x, _ = world.sample(1500, g)
    y, _ = world.sample(1500, g)
    u = energy_distance_u(x + 0.05, y)
    draws = torch.tensor([SlicedEnergyReference(y, directions=32, generator=g).distances(x + 0.05)[0]
                          for _ in range(40)], dtype=torch.float64)
    assert abs(float(draws.mean()) - u) < 3 * float(draws.std()) / math.sqrt(40)

"""The Gaussian-path identities, checked numerically and against Bayes' rule for Gaussian data."""

import math

import pytest
import torch

from sidrepro import flow
from sidrepro.flow import PATHS, RECTIFIED_FLOW, TRIGFLOW, VP, convert_time, convert_velocity, get_path

torch.manual_seed(0)


def _times(path, n):
    lo, hi = path.t_min, path.t_max
    return lo + (hi - lo) * (0.02 + 0.96 * torch.rand(n, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(PATHS))
def test_prediction_conversions_round_trip(name):
    path = PATHS[name]
    x0, eps = torch.randn(64, 3, 4, dtype=torch.float64), torch.randn(64, 3, 4, dtype=torch.float64)
    t = _times(path, 64)
    x_t = path.interpolate(x0, eps, t)
    v = path.velocity(x0, eps, t)
    torch.testing.assert_close(path.x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(path.eps_from_velocity(x_t, v, t), eps)
    torch.testing.assert_close(path.velocity_from_x0(x_t, x0, t), v)
    torch.testing.assert_close(path.velocity_from_eps(x_t, eps, t), v)
    torch.testing.assert_close(path.x0_from_eps(x_t, eps, t), x0)
    torch.testing.assert_close(path.eps_from_x0(x_t, x0, t), eps)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_velocity_is_time_derivative_of_path(name):
    path = PATHS[name]
    x0, eps = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 5, dtype=torch.float64)
    t, h = _times(path, 32), 1e-6
    fd = (path.interpolate(x0, eps, t + h) - path.interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(path.velocity(x0, eps, t), fd, rtol=1e-6, atol=1e-6)


def test_rectified_flow_shorthands_match_the_path():
    x0, eps = torch.randn(16, 4), torch.randn(16, 4)
    t = torch.rand(16) * 0.98 + 0.01
    x_t = flow.interpolate(x0, eps, t)
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * eps)
    v = eps - x0  # the rectified-flow target
    torch.testing.assert_close(flow.x0_from_velocity(x_t, v, t), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flow.eps_from_velocity(x_t, v, t), eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flow.velocity_from_x0(x_t, x0, t), v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flow.velocity_from_eps(x_t, eps, t), v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(RECTIFIED_FLOW.x0_from_velocity(x_t, v, t), flow.x0_from_velocity(x_t, v, t))


def test_scalar_time_and_shape_errors():
    x = torch.randn(4, 2)
    torch.testing.assert_close(flow.interpolate(x, x, 0.25), x)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        flow.interpolate(x, x, torch.rand(3))


@pytest.mark.parametrize("src", sorted(PATHS))
@pytest.mark.parametrize("dst", sorted(PATHS))
def test_convert_time_matches_states_exactly(src, dst):
    s, d = PATHS[src], PATHS[dst]
    t = _times(s, 50)
    u, scale = convert_time(t, s, d)
    assert ((u >= d.t_min - 1e-9) & (u <= d.t_max + 1e-9)).all()
    # Same (x0, eps) give x_t(src) = scale * x_u(dst): both coefficients must match.
    torch.testing.assert_close(s.alpha(t), scale * d.alpha(u))
    torch.testing.assert_close(s.sigma(t), scale * d.sigma(u))


def test_known_time_maps():
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    u, scale = convert_time(t, RECTIFIED_FLOW, TRIGFLOW)
    torch.testing.assert_close(u, torch.atan(t / (1 - t)))
    torch.testing.assert_close(u[1], torch.tensor(math.pi / 4, dtype=torch.float64))
    torch.testing.assert_close(scale[1], torch.tensor(math.sqrt(0.5), dtype=torch.float64))
    with pytest.raises(ValueError, match="choose one of"):
        get_path("edm")


def _gaussian_posterior(path, x_t, t, mu, cov):
    """E[x0 | x_t] for x0 ~ N(mu, cov) by Bayes' rule (Gaussian conditioning), per sample."""
    out = []
    for i in range(x_t.shape[0]):
        a, s = path.alpha(t[i]), path.sigma(t[i])
        c = a * a * cov + s * s * torch.eye(len(mu), dtype=torch.float64)
        out.append(mu + a * cov @ torch.linalg.solve(c, x_t[i] - a * mu))
    return torch.stack(out)


def _exact_velocity(path, x_t, t, mu, cov):
    x0 = _gaussian_posterior(path, x_t, t, mu, cov)
    return path.velocity_from_x0(x_t, x0, t), x0


@pytest.mark.parametrize("name", sorted(PATHS))
def test_bayes_posterior_agrees_with_every_parametrisation(name):
    path = PATHS[name]
    g = torch.Generator().manual_seed(1)
    dim = 3
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    a_ = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a_ @ a_.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    x_t = torch.randn(40, dim, generator=g, dtype=torch.float64)
    t = _times(path, 40)
    v, x0 = _exact_velocity(path, x_t, t, mu, cov)
    eps = path.eps_from_x0(x_t, x0, t)
    # Posterior means of eps and x0 must be consistent through every conversion.
    torch.testing.assert_close(path.x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(path.eps_from_velocity(x_t, v, t), eps)
    torch.testing.assert_close(path.velocity_from_eps(x_t, eps, t), v)
    # E[eps | x_t] from its own Bayes formula: Cov(eps, x_t) C^-1 (x_t - a mu) with Cov(eps, x_t) = s I.
    for i in range(5):
        a, s = path.alpha(t[i]), path.sigma(t[i])
        c = a * a * cov + s * s * torch.eye(dim, dtype=torch.float64)
        torch.testing.assert_close(eps[i], s * torch.linalg.solve(c, x_t[i] - a * mu))
    # Another path at the equivalent time sees the same posterior once x_t is rescaled.
    for other in PATHS.values():
        x_u, v_u, u = convert_velocity(x_t, v, t, path, other)
        v_direct, x0_direct = _exact_velocity(other, x_u, u, mu, cov)
        torch.testing.assert_close(x0_direct, x0)
        torch.testing.assert_close(v_u, v_direct)


def test_exact_velocity_is_the_regression_of_the_flow_matching_target():
    """Monte-Carlo: least squares of (eps - x0) on x_t recovers the Bayes-optimal (linear, for Gaussian data)
    velocity at a fixed time, independently of the closed form."""
    g = torch.Generator().manual_seed(2)
    dim, n, t = 2, 400_000, 0.6
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    x0 = mu + torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    eps = torch.randn(n, dim, generator=g, dtype=torch.float64)
    x_t = flow.interpolate(x0, eps, t)
    design = torch.cat([x_t, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, eps - x0).solution
    probe = torch.randn(8, dim, generator=g, dtype=torch.float64)
    v_fit = torch.cat([probe, torch.ones(8, 1, dtype=torch.float64)], 1) @ coef
    v_exact, _ = _exact_velocity(RECTIFIED_FLOW, probe, torch.full((8,), t, dtype=torch.float64), mu, cov)
    torch.testing.assert_close(v_fit, v_exact, atol=0.02, rtol=0.02)


def test_vp_schedule_is_variance_preserving():
    t = torch.linspace(0.01, 1, 20, dtype=torch.float64)
    torch.testing.assert_close(VP.alpha(t) ** 2 + VP.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(VP.time_from_ratio(VP.ratio(t)), t)

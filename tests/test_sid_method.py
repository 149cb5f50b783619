"""The two SiD phases: their losses equal the spec's formulas, and gradients go where they should."""

import pytest
import torch

from sidrepro.flow import interpolate, x0_from_velocity
from sidrepro.sid import (
    AdversarialSchedule,
    SiD,
    SiDConfig,
    discriminator_loss,
    fake_score_loss,
    generate,
    generator_adversarial_loss,
    generator_loss,
    loss_weight,
)
from sidrepro.toy.nets import VelocityMLP
from sidrepro.toy.teacher import Bound, guided


@pytest.fixture
def nets():
    torch.manual_seed(0)
    teacher = VelocityMLP(3, 4, hidden=32, depth=2).requires_grad_(False)
    fake = VelocityMLP(3, 4, hidden=32, depth=2)
    gen = VelocityMLP(3, 4, hidden=32, depth=2)
    return teacher, fake, gen


def _batch(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 4, (b,), generator=g), torch.randn(b, 3, generator=g), torch.randn(b, 3, generator=g),
            torch.rand(b, generator=g) * 0.9 + 0.05)


def test_fake_phase_is_the_scaled_flow_matching_loss_on_detached_samples(nets):
    _, fake, gen = nets
    labels, z, eps, t = _batch()
    cfg = SiDConfig(noise="fixed", ls=2.5, cfg_train_fake=3.0)
    out = SiD(cfg).fake_phase(Bound(gen, labels).velocity, Bound(fake, labels), z, eps, t, 3)
    x_g = generate(Bound(gen, labels).velocity, z, 3, noise="fixed")
    v, _ = guided(fake, interpolate(x_g, eps, t), t, labels, 3.0)
    torch.testing.assert_close(out.loss, 2.5 * fake_score_loss(v, x_g, eps).sum())
    out.loss.backward()
    assert all(p.grad is None for p in gen.parameters())  # samples are detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fake.parameters())


def test_generator_phase_is_the_sid_loss_and_reaches_only_the_generator(nets):
    teacher, fake, gen = nets
    fake.requires_grad_(False)
    labels, z, eps, t = _batch(1)
    cfg = SiDConfig(noise="fixed", alpha=1.2, cfg_eval_fake=2.0, cfg_eval_real=4.5, weighting="snr_sqrt")
    out = SiD(cfg).generator_phase(Bound(gen, labels).velocity, Bound(teacher, labels), Bound(fake, labels),
                                   z, eps, t, 2)
    with torch.no_grad():
        x_g = generate(Bound(gen, labels).velocity, z, 2, noise="fixed")
        x_t = interpolate(x_g, eps, t)
        f_r = x0_from_velocity(x_t, guided(teacher, x_t, t, labels, 4.5)[0], t)
        f_f = x0_from_velocity(x_t, guided(fake, x_t, t, labels, 2.0)[0], t)
        want = 100 * generator_loss(x_g, f_r, f_f, t, alpha=1.2, scheme="snr_sqrt").sum()
    torch.testing.assert_close(out.loss.detach(), want)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(p.grad is None for p in (*teacher.parameters(), *fake.parameters()))


def test_data_aided_phases_add_the_adversarial_terms(nets):
    teacher, fake, gen = nets
    labels, z, eps, t = _batch(2)
    x_real = torch.randn(6, 3)
    sid = SiD(SiDConfig(noise="fixed", lsd=0.7, lsg_gan=3.0), AdversarialSchedule(10, 20))
    out = sid.fake_phase(Bound(gen, labels).velocity, Bound(fake, labels), z, eps, t, 1,
                         real_x0=x_real, fake_on_real=Bound(fake, labels))
    x_g = generate(Bound(gen, labels).velocity, z, 1)
    v, h_fake = fake(interpolate(x_g, eps, t), t, labels, features=True)
    _, h_real = fake(interpolate(x_real, eps, t), t, labels, features=True)
    want = fake_score_loss(v, x_g, eps).sum() + 0.7 * discriminator_loss(h_real, h_fake, num_elements=3).sum()
    torch.testing.assert_close(out.loss, want)
    with pytest.raises(ValueError, match="fake_on_real"):
        sid.fake_phase(Bound(gen, labels).velocity, Bound(fake, labels), z, eps, t, 1, real_x0=x_real)
    # Generator: SiD only until mix_nimg, then an even mix with the adversarial term.
    fake.requires_grad_(False)
    args = (Bound(gen, labels).velocity, Bound(teacher, labels), Bound(fake, labels), z, eps, t, 1)
    sid_only = sid.generator_phase(*args, nimg=20)
    mixed = sid.generator_phase(*args, nimg=21)
    assert "loss_adv" not in sid_only.stats and "loss_adv" in mixed.stats
    x_t = interpolate(x_g, eps, t)
    _, h = fake(x_t, t, labels, features=True)
    adv = generator_adversarial_loss(h, loss_weight("1_minus_sigma", t), num_elements=3).sum()
    torch.testing.assert_close(mixed.loss, 0.5 * sid_only.loss + 0.5 * 3.0 * adv)
    assert not sid.generator_steps(10) and sid.generator_steps(11)


def test_guided_toy_network_uses_the_conditional_half_for_logits(nets):
    teacher, _, _ = nets
    labels, x, _, t = _batch(3)
    v, h = guided(teacher, x, t, labels, 4.5, features=True)
    null = torch.full_like(labels, 4)
    v_c, h_c = teacher(x, t, labels, features=True)
    torch.testing.assert_close(v, teacher(x, t, null) + 4.5 * (v_c - teacher(x, t, null)))
    torch.testing.assert_close(h, h_c)


def test_steps_are_uniform_over_one_to_n():
    sid = SiD(SiDConfig(num_steps=4))
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sid.sample_steps(g) for _ in range(4000)]), minlength=5)
    assert counts[0] == 0 and all(abs(int(c) - 1000) < 120 for c in counts[1:])


def test_config_errors():
    for kw, match in (({"noise": "ode"}, "noise"), ({"num_steps": 0}, "num_steps"), ({"alpha": -2000}, "alpha")):
        with pytest.raises(ValueError, match=match):
            SiDConfig(**kw)

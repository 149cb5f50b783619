"""Non-finite samples and precision flags, as the official SiD-DiT code handles them: a sample whose values go NaN
is dropped from its phase's loss (the rest still learn, normalised by the full batch), gradients are sanitised and
the optimisers always step; a run stops only after repeated bad iterations. Pure bf16 takes each family's own
optimiser rules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sidrepro.distill.config import resolve_config
from sidrepro.distill.trainer import init_distributed, train
from sidrepro.sid import SiD, SiDConfig, fake_score_loss, finite_sum
from sidrepro.sid.losses import drop_samples, kept_sum
from sidrepro.teachers.load import load_teacher

NAME = "tiny-sana"
PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]
BAD = 1  # the sample that goes non-finite


def _poison(row: int, how: str = "assign"):
    """A forward hook that makes sample ``row`` of a network's output NaN. ``assign`` overwrites the row (no NaN
    in backward); ``multiply`` multiplies it by NaN (its backward multiplies the incoming gradient by NaN too)."""

    def hook(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        if how == "assign":
            out = out.clone()
            out[row] = float("nan")
        else:
            mask = torch.ones_like(out)
            mask[row] = float("nan")
            out = out * mask
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return hook


@pytest.fixture(scope="module")
def zoo_nets(tiny_zoo):
    adapter = load_teacher(NAME, tiny_zoo[NAME])
    return adapter, adapter.encode_prompts(PROMPTS[:3]), adapter.empty(3)


def _draws(adapter, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = adapter.latent_shape(64)
    z, eps = torch.randn(b, *shape, generator=g), torch.randn(b, *shape, generator=g)
    return z, eps, torch.rand(b, generator=g) * 0.8 + 0.1


def _grads_finite(net) -> bool:
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    return bool(grads) and all(bool(g.isfinite().all()) for g in grads)


def _changed(net, before) -> bool:
    return any(not torch.equal(p.detach(), before[k]) for k, p in net.named_parameters())


METHOD = SiDConfig(num_steps=2, cfg_train_fake=4.5, cfg_eval_fake=4.5, cfg_eval_real=4.5)


def test_where_on_the_per_sample_loss_alone_leaks_nan_into_gradients():
    """Why the loss's inputs are masked: dropping a NaN sample's loss with ``where`` still hands the network
    output a NaN gradient through the squared error's backward (0 * NaN), which the network's backward then
    spreads into its weights; masking the inputs first hands it exact zeros."""
    x_g, eps = torch.zeros(3, 4), torch.full((3, 4), 2.0)

    def output():  # a network output whose sample BAD went NaN
        v = torch.ones(3, 4)
        v[BAD] = float("nan")
        return v.requires_grad_(True)

    v = output()
    finite_sum(fake_score_loss(v, x_g, eps)).backward()
    assert v.grad[BAD].isnan().all()  # the naive drop
    v = output()
    keep = v.isfinite().all(dim=1)
    kept_sum(fake_score_loss(drop_samples(v, keep), x_g, eps), keep).backward()
    assert v.grad.isfinite().all() and (v.grad[BAD] == 0).all() and (v.grad[0] != 0).all()


def test_fake_phase_drops_a_nan_sample_and_still_learns(zoo_nets):
    adapter, cond, uncond = zoo_nets
    torch.manual_seed(0)
    gen = adapter.load_transformer().requires_grad_(False)
    fake = adapter.load_transformer()
    before = {k: p.detach().clone() for k, p in fake.named_parameters()}
    opt = torch.optim.Adam(fake.parameters(), lr=1e-4, betas=(0.0, 0.999))
    z, eps, t = _draws(adapter)
    sid = SiD(METHOD)
    handle = fake.register_forward_hook(_poison(BAD))  # CFG: sample BAD's unconditional half goes NaN
    out = sid.fake_phase(adapter.bind(gen, cond).velocity, adapter.bind(fake, cond, uncond), z, eps, t, 1)
    handle.remove()
    assert torch.isfinite(out.loss) and out.stats["dropped_fake"] == 1 and out.stats["nonfinite_loss"] == 0
    (out.loss / 3).backward()
    assert _grads_finite(fake)  # before any sanitising: the dropped sample sends back exact zeros
    opt.step()
    assert _changed(fake, before)
    # The kept samples' loss is what the same samples give without the poisoned one: a sum, not a re-averaging.
    keep = [i for i in range(3) if i != BAD]
    with torch.no_grad():
        clean = sid.fake_phase(adapter.bind(gen, cond[keep]).velocity, adapter.bind(before_net(adapter, before),
                               cond[keep], uncond[keep]), z[keep], eps[keep], t[keep], 1)
    assert float(out.loss.detach()) == pytest.approx(float(clean.loss), rel=1e-4)
    assert clean.stats["dropped_fake"] == 0


def before_net(adapter, state):
    net = adapter.load_transformer()
    net.load_state_dict(state)
    return net


def test_fake_phase_keeps_a_nan_generator_sample_out_of_the_fake_network(zoo_nets):
    adapter, cond, uncond = zoo_nets
    gen = adapter.load_transformer().requires_grad_(False)
    fake = adapter.load_transformer()
    z, eps, t = _draws(adapter)
    z[BAD, 0, 0, 0] = float("nan")  # one sample's initial latent
    out = SiD(METHOD).fake_phase(adapter.bind(gen, cond).velocity, adapter.bind(fake, cond, uncond), z, eps, t, 2,
                                 noise_generator=torch.Generator().manual_seed(1))
    assert out.stats["dropped_fake"] == 1 and torch.isfinite(out.loss)
    out.loss.backward()
    assert _grads_finite(fake)


def test_generator_phase_drops_a_nan_sample_and_still_learns(zoo_nets):
    adapter, cond, uncond = zoo_nets
    teacher = adapter.load_transformer().requires_grad_(False)
    fake = adapter.load_transformer().requires_grad_(False)
    gen = adapter.load_transformer()
    before = {k: p.detach().clone() for k, p in gen.named_parameters()}
    opt = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.0, 0.999))
    z, eps, t = _draws(adapter, seed=3)
    handle = fake.register_forward_hook(_poison(BAD))  # f_fake of sample BAD goes NaN
    out = SiD(METHOD).generator_phase(adapter.bind(gen, cond).velocity, adapter.bind(teacher, cond, uncond),
                                      adapter.bind(fake, cond, uncond), z, eps, t, 2,
                                      noise_generator=torch.Generator().manual_seed(1))
    handle.remove()
    assert torch.isfinite(out.loss) and out.stats["dropped_gen"] == 1 and math.isfinite(out.stats["loss_sid"])
    (out.loss / 3).backward()
    assert _grads_finite(gen)
    opt.step()
    assert _changed(gen, before)


@pytest.mark.parametrize("how", ["assign", "multiply"])
def test_trainer_keeps_training_through_a_nan_sample_and_logs_it(how, tiny_zoo, tmp_path, monkeypatch):
    """Every network's output for the first sample of each micro-batch is NaN. The run never counts a bad
    iteration (max_bad_iters=0 would stop it at the first), logs one dropped sample per micro-batch and phase, and
    with NaN in the backward (``multiply``) logs the sanitised gradients and still steps. One generator step: with
    more, a NaN from an earlier (gradient-free) step enters the last step's forward, whose backward then puts NaN
    into the generator's gradients whatever the loss does (sanitised, as in the official code)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg, sources = resolve_config(NAME, {"prompts": str(prompts), "duration_kimg": "0.008", "max_bad_iters": "0",
                                         "num_steps": "1",
                                         "snapshot_ticks": "0", "checkpoint_ticks": "100"})
    adapter = load_teacher(NAME, tiny_zoo[NAME])
    load = adapter.load_transformer

    def poisoned_load(dtype=None):
        net = load(dtype)
        net.register_forward_hook(_poison(0, how))
        return net

    monkeypatch.setattr(adapter, "load_transformer", poisoned_load)
    teacher_state = load().state_dict()
    ckpt = train(cfg, tmp_path / "run", adapter, progress=False, sources=sources)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    rounds = cfg.batch // cfg.batch_gpu
    assert len(rows) == 2
    for r in rows:
        assert (r["dropped_fake"], r["dropped_gen"], r["nonfinite_loss"], r["bad_iters"]) == (rounds, rounds, 0, 0)
        assert math.isfinite(r["loss_fake"]) and math.isfinite(r["loss_sid"])
        sanitized = 1.0 if how == "multiply" else 0.0
        assert (r["sanitized_fake"], r["sanitized_gen"]) == (sanitized, sanitized)
    if how == "assign":  # exact zeros from the dropped sample: both networks learn from the kept ones
        from safetensors.torch import load_file

        for name in ("generator", "fake"):
            w = load_file(ckpt / f"{name}.safetensors")
            assert any(not torch.equal(w[k], teacher_state[k]) for k in w), name


def test_trainer_stops_when_every_sample_is_dropped(tiny_zoo, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg, _ = resolve_config(NAME, {"prompts": str(prompts), "duration_kimg": "0.016", "max_bad_iters": "1",
                                   "snapshot_ticks": "0", "checkpoint_ticks": "100"})
    adapter = load_teacher(NAME, tiny_zoo[NAME])
    load = adapter.load_transformer

    def poisoned_load(dtype=None):
        net = load(dtype)
        net.register_forward_hook(lambda _m, _a, out: (out[0] * float("nan"), *out[1:]))
        return net

    monkeypatch.setattr(adapter, "load_transformer", poisoned_load)
    with pytest.raises(RuntimeError, match=r"dropped every sample.*max_bad_iters=1"):
        train(cfg, tmp_path / "run", adapter, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["bad_iters"] for r in rows] == [1]  # logged; the second bad iteration stops the run
    assert rows[0]["dropped_fake"] == cfg.batch and (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(("teacher", "eps", "clip"), [("sana-0.6b", 1e-8, 0.0), ("sana-sprint-1.6b-teacher", 1e-8, 0.0),
                                                      ("sd3-medium", 1e-4, 1.0), ("sd3.5-large", 1e-4, 1.0),
                                                      ("flux-dev-512", 1e-4, 1.0)])
def test_pure_bf16_takes_each_familys_optimizer_rules(teacher, eps, clip):
    amp, _ = resolve_config(teacher)
    cfg, src = resolve_config(teacher, {"precision": "bf16"})
    assert (cfg.adam_eps, cfg.grad_clip, cfg.lr, cfg.glr) == (eps, clip, 1e-5, 1e-5)
    assert amp.adam_eps == 1e-8 and amp.grad_clip == 0.0
    if teacher.startswith("sana"):
        assert src["adam_eps"].startswith("script") and "fp16 only" in src["adam_eps"]
        assert "never clips" in src["grad_clip"]
    else:
        assert src["adam_eps"].startswith("code") and "SD3/FLUX" in src["adam_eps"]
        assert "SD3/FLUX" in src["grad_clip"]
    assert src["lr"] == "readme (pure bf16)"
    user, src_user = resolve_config(teacher, {"precision": "bf16", "adam_eps": "1e-6"})
    assert user.adam_eps == 1e-6 and src_user["adam_eps"] == "user"


def test_init_distributed_turns_off_reduced_precision(monkeypatch):
    flags = [(torch.backends.cuda.matmul, f) for f in ("allow_tf32", "allow_bf16_reduced_precision_reduction",
                                                      "allow_fp16_reduced_precision_reduction")]
    flags.append((torch.backends.cudnn, "allow_tf32"))
    saved = [getattr(m, f) for m, f in flags]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    try:
        for m, f in flags:
            setattr(m, f, True)
        init_distributed()
        assert [getattr(m, f) for m, f in flags] == [False] * 4
    finally:
        for (m, f), v in zip(flags, saved, strict=True):
            setattr(m, f, v)

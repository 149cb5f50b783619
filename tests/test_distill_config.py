"""The run config: presets per teacher, sources of every value, overrides and their errors."""

from __future__ import annotations

import pytest

from sidrepro.distill.config import PRESETS, RunConfig, parse_overrides, resolve_config
from sidrepro.teachers.registry import TEACHERS


def test_every_teacher_has_a_preset_and_resolves():
    for name in TEACHERS:
        assert name in PRESETS
        cfg, sources = resolve_config(name)
        assert cfg.resolution > 0 and set(sources) >= {"lr", "batch", "resolution"}


def test_sana_script_values_and_uncertain_labels():
    cfg, src = resolve_config("sana-0.6b")
    assert (cfg.lr, cfg.glr, cfg.batch, cfg.batch_gpu, cfg.resolution) == (5e-6, 5e-6, 256, 8, 512)
    assert (cfg.cfg_train_fake, cfg.cfg_eval_fake, cfg.cfg_eval_real, cfg.alpha) == (4.5, 4.5, 4.5, 1.0)
    assert (cfg.lsg, cfg.ls, cfg.init_timestep, cfg.num_steps, cfg.noise) == (100.0, 1.0, 999, 4, "fresh")
    assert src["lr"] == "script" and src["lsg"] == "code"
    sd3, src3 = resolve_config("sd3-medium")
    assert sd3.lr == 1e-6 and src3["lr"] == "readme"
    assert src3["cfg_eval_real"] == "uncertain" and src3["resolution"] == "uncertain"


def test_pure_bf16_applies_the_spec_rules_unless_overridden():
    cfg, src = resolve_config("sd3-medium", {"precision": "bf16"})
    assert (cfg.adam_eps, cfg.lr, cfg.grad_clip) == (1e-4, 1e-5, 1.0)
    cfg, src = resolve_config("sd3-medium", {"precision": "bf16", "lr": "2e-6"})
    assert cfg.lr == 2e-6 and src["lr"] == "user" and cfg.glr == 1e-5


def test_overrides_parse_and_errors_name_the_key():
    cfg, src = resolve_config("tiny-sd3", parse_overrides(["batch=8", "grad_checkpointing=true", "noise=ddim"]))
    assert (cfg.batch, cfg.grad_checkpointing, cfg.noise) == (8, True, "ddim") and src["batch"] == "user"
    with pytest.raises(ValueError, match=r"unknown config key.*lrr"):
        resolve_config("tiny-sd3", {"lrr": "1"})
    with pytest.raises(ValueError, match="unknown teacher"):
        resolve_config("sdxl")
    with pytest.raises(ValueError, match=r"'batch'.*expected a int"):
        resolve_config("tiny-sd3", {"batch": "many"})
    with pytest.raises(ValueError, match="'resolution'"):
        resolve_config("tiny-sd3", {"resolution": "100"})
    with pytest.raises(ValueError, match="'noise'"):
        RunConfig(teacher="tiny-sd3", noise="pink")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_per_rank_batch_and_accumulation():
    cfg = RunConfig(teacher="tiny-sd3", batch=256, batch_gpu=8)
    assert cfg.per_rank(4) == (64, 8)
    assert RunConfig(teacher="t", batch=4, batch_gpu=8).per_rank(1) == (4, 1)
    with pytest.raises(ValueError, match="not divisible by 3 ranks"):
        cfg.per_rank(3)
    with pytest.raises(ValueError, match="batch_gpu"):
        RunConfig(teacher="t", batch=24, batch_gpu=5).per_rank(2)

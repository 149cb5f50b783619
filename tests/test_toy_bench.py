"""The benchmark's verdicts implement the stated bounds, and its configuration refuses bad input."""

import json
import math

import pytest
import torch

from sidrepro.toy.bench import ToyBenchConfig, _summary, _verdict, format_table, ratio_with_error, rescore, run
from sidrepro.toy.distill import DistillConfig
from sidrepro.toy.mixture import WorldSpec
from sidrepro.toy.teacher import TeacherConfig


def _d(x):
    return {"energy": {"mean": x, "std": 0.0}}


@pytest.mark.parametrize(("setting", "bias", "student", "teacher", "floor", "verdict"), [
    ("data-free", 0.0, 1.4e-3, 1.0e-3, 1e-4, "pass: <= 1.5x teacher"),
    ("data-free", 0.0, 1.6e-3, 1.0e-3, 1e-4, "FAIL"),
    ("data-free", 0.0, 1.9e-4, 1.1e-4, 1e-4, "pass: within 2.0x floor"),  # both at the floor
    ("data-free", 0.0, 1.9e-4, 2.1e-4, 1e-4, "pass: <= 1.5x teacher"),
    ("data-free", 0.0, 2.1e-4, 1.1e-4, 1e-4, "FAIL"),
    ("data-aided", 1.0, 0.9e-2, 1.0e-2, 1e-4, "pass: beats teacher"),
    ("data-aided", 1.0, 1.1e-2, 1.0e-2, 1e-4, "FAIL: not below teacher"),
    ("data-aided", 0.0, 5e-3, 1.0e-3, 1e-4, "info"),
])
def test_verdicts(setting, bias, student, teacher, floor, verdict):
    assert _verdict(setting, bias, _d(student), _d(teacher), _d(floor)).startswith(verdict)


def test_verdict_quotes_the_ratio_error_and_uses_the_floor_error():
    near = _verdict("data-free", 0.0, _d(1.6e-3), _d(1.0e-3), _d(1e-5), ratio_se=0.08)
    assert near.startswith("FAIL") and "1.60 ± 0.08" in near and "within 2 SE" in near
    clear = _verdict("data-free", 0.0, _d(2.0e-3), _d(1.0e-3), _d(1e-5), ratio_se=0.08)
    assert clear.startswith("FAIL") and "within 2 SE" not in clear
    # U-statistic floor: mean ~0, so the level "at the floor" is |mean| + 2 SE
    floor = {"energy": {"mean": -1e-6, "std": 3e-5, "se": 1e-5}}
    assert _verdict("data-free", 0.0, _d(4e-5), _d(2e-5), floor).startswith("pass: within 2.0x floor")
    assert _verdict("data-free", 0.0, _d(5e-5), _d(2e-5), floor).startswith("FAIL")


def test_summary_standard_error_and_ratio_error_match_simulation():
    rows = [{"energy": x} for x in (1.0, 2.0, 3.0, 4.0)]
    s = _summary(rows)["energy"]
    assert s["mean"] == 2.5 and s["se"] == pytest.approx(s["std"] / 2)
    # The delta-method error of a ratio of paired means, against the spread of the ratio over many experiments.
    g = torch.Generator().manual_seed(0)
    ratios, errors = [], []
    for _ in range(2000):
        shared = torch.randn(10, generator=g)  # the shared reference set correlates the pair
        den = 1.0 + 0.1 * shared + 0.05 * torch.randn(10, generator=g)
        num = 1.5 + 0.2 * shared + 0.1 * torch.randn(10, generator=g)
        r, se = ratio_with_error(num.tolist(), den.tolist())
        ratios.append(r)
        errors.append(se)
    spread = float(torch.tensor(ratios).std())
    assert float(torch.tensor(errors).mean()) == pytest.approx(spread, rel=0.15)
    assert ratio_with_error([2.0], [1.0]) == (2.0, 0.0)


def test_tiny_run_reports_errors_and_rescores_from_saved_networks(tmp_path):
    cfg = ToyBenchConfig(world=WorldSpec(modes=3), settings=("data-free",), noises=("fresh",),
                         teacher=TeacherConfig(iters=40), distill=DistillConfig(iters=4, batch=32),
                         eval_samples=300, eval_repeats=3)
    result = run(cfg, tmp_path, progress=False)
    s = result["students"][0]
    assert {"ratio_to_teacher", "ratio_to_teacher_se", "ratio_to_teacher_v"} <= set(s)
    assert {"mean", "std", "se"} <= set(s["distance"]["energy"]) and "energy_v" in s["distance"]
    assert all(math.isfinite(x["ratio_to_teacher"]) for x in result["students"])
    again = rescore(tmp_path, eval_samples=300, eval_repeats=3)  # same evaluation seeds: same figures
    assert again["students"][0]["distance"]["energy"]["mean"] == pytest.approx(s["distance"]["energy"]["mean"])
    assert again["students"][0]["shape"]["shift_max"] == pytest.approx(s["shape"]["shift_max"])
    assert "worst mode" in format_table(result)
    other = rescore(tmp_path, eval_samples=200, eval_repeats=2, eval_seed=5)
    assert json.loads((tmp_path / "rescore-n200-r2-s5.json").read_text())["config"]["eval_seed"] == 5
    assert other["floor"]["energy"]["mean"] != result["floor"]["energy"]["mean"]


@pytest.mark.parametrize(("kw", "match"), [
    ({"settings": ("data-rich",)}, "unknown setting"),
    ({"noises": ("ode",)}, "noise"),
    ({"num_steps": 0}, "steps must be >= 1"),
    ({"eval_samples": 10}, "eval_samples"),
    ({"eval_directions": 0}, "eval_directions"),
    ({"bias": -0.5}, "bias"),
    ({"settings": ()}, "at least one"),
])
def test_bad_benchmark_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        ToyBenchConfig(world=WorldSpec(), **kw)

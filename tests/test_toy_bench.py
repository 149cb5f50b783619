"""The benchmark's verdicts implement the stated bounds, and its configuration refuses bad input."""

import pytest

from sidrepro.toy.bench import ToyBenchConfig, _verdict
from sidrepro.toy.mixture import WorldSpec


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


@pytest.mark.parametrize(("kw", "match"), [
    ({"settings": ("data-rich",)}, "unknown setting"),
    ({"noises": ("ode",)}, "noise"),
    ({"num_steps": 0}, "steps must be >= 1"),
    ({"eval_samples": 10}, "eval_samples"),
    ({"bias": -0.5}, "bias"),
    ({"settings": ()}, "at least one"),
])
def test_bad_benchmark_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        ToyBenchConfig(world=WorldSpec(), **kw)

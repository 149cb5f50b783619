"""The ``sidrepro`` command: bad input gets a clear error, and a tiny toy run writes its outputs."""

import json
import subprocess
import sys

import pytest

from sidrepro.cli import main


@pytest.mark.parametrize(("argv", "message"), [
    (["toy", "--steps", "0"], "positive integer"),
    (["toy", "--steps", "-2"], "positive integer"),
    (["toy", "--dim", "two"], "positive integer"),
    (["toy", "--noise", "ode"], "fresh, fixed, ddim"),
    (["toy", "--settings", "data-rich"], "data-free, data-aided"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["toy", "--modes", "40", "--dim", "1"], "raise mean_scale"),
    (["toy", "--bias", "-1"], "bias must be >= 0"),
    (["toy", "--eval-samples", "10"], "eval_samples"),
    (["toy", "--min-std", "0.3", "--max-std", "0.1"], "min_std <= max_std"),
    (["toy", "--mean-scale", "0"], "mean_scale"),
    (["toy", "--lr", "-1"], "learning rates must be > 0"),
])
def test_bad_values_are_refused_before_any_work(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tiny_toy_run_writes_result_config_and_plots(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sidrepro.cli", "toy", "--modes", "3", "--teacher-iters", "150", "--iters", "30",
         "--batch", "64", "--eval-samples", "400", "--eval-repeats", "2", "--noise", "fresh,ddim",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # 30 iterations need not meet the bounds (no --check); no crash
    assert "energy dist" in proc.stdout and "true data (floor)" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert [(s["setting"], s["noise"], s["steps"]) for s in result["students"]] == [
        ("data-free", "fresh", 1), ("data-free", "fresh", 4), ("data-free", "ddim", 1), ("data-free", "ddim", 4),
        ("data-aided", "fresh", 1), ("data-aided", "fresh", 4)]
    assert result["floor"]["energy"]["std"] >= 0 and result["teacher"]["field_error"] > 0
    assert json.loads((out / "config.json").read_text())["world"]["modes"] == 3
    for name in ("samples.png", "losses.png", "train_log.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp*"))

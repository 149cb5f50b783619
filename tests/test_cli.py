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
    config = json.loads((out / "config.json").read_text())
    assert config["world"]["modes"] == 3
    # 2-D: the given iterations, the 2-D learning rates (a quarter of the rates used above 2-D).
    assert (config["distill"]["iters"], config["distill"]["lr"], config["distill"]["glr"]) == (30, 1.5e-4, 7.5e-5)
    for name in ("samples.png", "losses.png", "train_log.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp*"))


def test_teachers_command_lists_every_table_model(capsys):
    assert main(["teachers", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"sana-0.6b", "sd3.5-large", "flux-dev-1024", "tiny-flux"} <= set(listing["teachers"])
    assert listing["teachers"]["sana-sprint-0.6b-teacher"]["time_scale"] == 1.0
    assert listing["baselines"]["hyper-flux"]["lora_id"] == "ByteDance/Hyper-SD"


@pytest.mark.parametrize(("argv", "message"), [
    (["fetch", "tiny-sana"], "sidrepro zoo"),
    (["fetch", "sdxl"], "unknown model 'sdxl'"),
    (["doctor", "sdxl"], "unknown model 'sdxl'"),
    (["distill", "--teacher", "sdxl", "--out", "x"], "unknown teacher 'sdxl'"),
    (["distill", "--teacher", "tiny-sd3", "--out", "x", "--set", "lrr=1"], "unknown config key"),
])
def test_teacher_and_distill_commands_refuse_bad_names(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_fetch_offline_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["fetch", "sana-0.6b", "--snapshots", str(tmp_path / "s"), "--lock", str(tmp_path / "lock.json")]) == 1
    out = capsys.readouterr().out
    assert "cannot reach the Hugging Face Hub" in out and "sidrepro fetch" in out
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_zoo_command_builds_entries(tmp_path, capsys):
    assert main(["zoo", "--out", str(tmp_path), "--names", "tiny-sd3"]) == 0
    assert (tmp_path / "tiny-sd3" / "model_index.json").exists()
    assert "1 tiny models" in capsys.readouterr().out

"""The DiT trainer on the tiny zoo: every family trains, checkpoints, exports and generates; a SIGKILLed run
resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sidrepro.distill.config import resolve_config
from sidrepro.distill.export import export_student, generate_images
from sidrepro.distill.trainer import ALLOC_CONF, set_allocator_defaults, train
from sidrepro.runstatus import read_status
from sidrepro.stopping import EXIT_CONTINUE
from sidrepro.teachers.load import load_teacher

PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit",
           "a city street in the rain", "a mountain lake", "an old bicycle", "a plate of pasta"]
FAMILIES = ["tiny-sana", "tiny-sana-sprint-teacher", "tiny-sd3", "tiny-sd35", "tiny-flux"]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(ckpt / f"{name}.safetensors")


@pytest.mark.parametrize("name", FAMILIES)
def test_data_free_trains_checkpoints_exports_and_generates(name, tiny_zoo, prompt_file, tmp_path):
    cfg, sources = resolve_config(name, {"prompts": str(prompt_file), "duration_kimg": "0.008",
                                         "checkpoint_ticks": "1", "snapshot_ticks": "1"})
    adapter = load_teacher(name, tiny_zoo[name])
    teacher_before = {k: v.clone() for k, v in adapter.load_transformer().state_dict().items()}
    ckpt = train(cfg, tmp_path / "run", adapter, progress=False, sources=sources)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["nimg"] == 4 * (i + 1) for i, r in enumerate(rows))
    for r in rows:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss_fake", "loss_sid", "grad_norm_fake",
                                                                "grad_norm_gen"))
    gen, fake = _weights(ckpt, "generator"), _weights(ckpt, "fake")
    assert any(not torch.equal(gen[k], teacher_before[k]) for k in gen)
    assert any(not torch.equal(fake[k], teacher_before[k]) for k in fake)
    teacher_after = adapter.load_transformer().state_dict()  # the snapshot on disk is never written
    assert all(torch.equal(teacher_after[k], teacher_before[k]) for k in teacher_before)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["teacher"] == name and config["sources"]["lr"] == "tiny"
    assert list((tmp_path / "run" / "grids").glob("grid-*.png")) and (tmp_path / "run" / "losses.png").exists()
    student = export_student(tmp_path / "run", tiny_zoo[name], tmp_path / "student")
    assert (student / "README.md").exists() and (student / "transformer" / "config.json").exists()
    images = list(generate_images(student, PROMPTS[:3], [0, 1, 2], batch=2))
    assert [s for s, _, _ in images] == [0, 1, 2]
    assert all(img.dtype == torch.uint8 and img.shape == (3, 64, 64) for _, _, img in images)
    again = list(generate_images(student, PROMPTS[:3], [0, 1, 2], batch=2))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(images, again, strict=True))


def _distill_cmd(run: Path, prompt_file: Path, zoo: Path, kimg: str) -> list[str]:
    return [sys.executable, "-m", "sidrepro.cli", "distill", "--teacher", "tiny-sd3", "--out", str(run),
            "--snapshot", str(zoo), "--prompts", str(prompt_file), "--quiet",
            "--set", f"duration_kimg={kimg}", "--set", "checkpoint_ticks=3", "--set", "snapshot_ticks=100"]


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_zoo, prompt_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"} | {"OMP_NUM_THREADS": "1"}
    zoo = tiny_zoo["tiny-sd3"]
    # Uninterrupted: 6 iterations of 4 images (checkpoints at 12 and 24 images).
    subprocess.run(_distill_cmd(tmp_path / "a", prompt_file, zoo, "0.024"), check=True, env=env, timeout=300)
    # Interrupted: SIGKILL once the 12-image checkpoint is complete, then the same command again.
    proc = subprocess.Popen(_distill_cmd(tmp_path / "b", prompt_file, zoo, "0.024"), env=env)
    first = tmp_path / "b" / "checkpoints" / "ckpt-0000000012" / "COMPLETE"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "checkpoints" / "ckpt-0000000024" / "COMPLETE").exists()
    subprocess.run(_distill_cmd(tmp_path / "b", prompt_file, zoo, "0.024"), check=True, env=env, timeout=300)
    # The command sets the CUDA allocator's default before anything allocates, and the run records it.
    assert json.loads((tmp_path / "a" / "config.json").read_text())["cuda_alloc_conf"] == ALLOC_CONF
    a = tmp_path / "a" / "checkpoints" / "ckpt-0000000024"
    b = tmp_path / "b" / "checkpoints" / "ckpt-0000000024"
    for name in ("generator", "fake"):
        wa, wb = _weights(a, name), _weights(b, name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_allocator_default_leaves_a_users_setting_alone(monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    set_allocator_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    set_allocator_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ALLOC_CONF == "expandable_segments:True"


def test_changed_settings_never_resume_a_run(tiny_zoo, prompt_file, tmp_path):
    """A run folder's checkpoint saved with another lsg is refused (naming the key), or with restart moved aside
    intact; a longer duration (a resumable key) resumes."""
    adapter = load_teacher("tiny-sana", tiny_zoo["tiny-sana"])
    base = {"prompts": str(prompt_file), "duration_kimg": "0.008", "checkpoint_ticks": "1", "tick_kimg": "0.004",
            "snapshot_ticks": "0"}
    out = tmp_path / "run"
    first = train(resolve_config("tiny-sana", base)[0], out, adapter, progress=False)
    longer = train(resolve_config("tiny-sana", {**base, "duration_kimg": "0.012"})[0], out, adapter, progress=False)
    assert longer.name == "ckpt-0000000012" and first.exists()
    changed, _ = resolve_config("tiny-sana", {**base, "duration_kimg": "0.012", "lsg": "50"})
    with pytest.raises(ValueError, match=r"lsg: 100\.0 -> 50\.0.*--on-config-change restart"):
        train(changed, out, adapter, progress=False)
    kept = _weights(longer, "generator")
    fresh = train(changed, out, adapter, progress=False, on_config_change="restart")
    assert fresh == longer  # the same path, written by the new run from scratch
    moved = next((out / "superseded").iterdir())
    old = _weights(moved / "checkpoints" / longer.name, "generator")
    assert all(torch.equal(kept[k], old[k]) for k in kept)
    assert json.loads((moved / "changes.json").read_text()) == {"lsg": [100.0, 50.0]}
    assert json.loads((fresh / "state.json").read_text())["config"]["lsg"] == 50.0
    assert not all(torch.equal(kept[k], v) for k, v in _weights(fresh, "generator").items())


def test_bad_inputs_are_refused(tiny_zoo, tmp_path):
    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    cfg, _ = resolve_config("tiny-sd3")
    with pytest.raises(ValueError, match="prompt file"):
        train(cfg, tmp_path / "run", adapter, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cfg, _ = resolve_config("tiny-sd3", {"prompts": str(empty)})
    with pytest.raises(ValueError, match=r"no prompts|empty"):
        train(cfg, tmp_path / "run2", adapter, progress=False)
    with pytest.raises(ValueError, match="'resolution'"):
        resolve_config("tiny-sd3", {"resolution": "72"})
    with pytest.raises(ValueError, match="not a multiple"):
        load_teacher("tiny-flux", tiny_zoo["tiny-flux"]).latent_shape(72)


def _write_shards(folder: Path, n_shards: int = 2, rows: int = 8) -> Path:
    """midjourney-v6-llava-style shards: a caption column and PNG bytes in the HF datasets struct layout."""
    import io

    import pandas as pd
    from PIL import Image

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for s in range(n_shards):
        images, captions = [], []
        for i in range(rows):
            arr = (torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{s}-{i}.png"})
            captions.append(PROMPTS[(s * rows + i) % len(PROMPTS)])
        pd.DataFrame({"llava": captions, "image": images}).to_parquet(folder / f"train_{s:03d}.parquet")
    return folder


@pytest.mark.parametrize("name", ["tiny-sana", "tiny-sd3", "tiny-flux"])
def test_data_aided_continues_from_data_free_with_the_schedule(name, tiny_zoo, prompt_file, tmp_path):
    adapter = load_teacher(name, tiny_zoo[name])
    free, _ = resolve_config(name, {"prompts": str(prompt_file), "duration_kimg": "0.008"})
    free_ckpt = train(free, tmp_path / "free", adapter, progress=False)
    shards = _write_shards(tmp_path / "shards")
    # Generator frozen while nimg <= 4 (spec: "<= 20k"), SiD only while nimg <= 8, then half SiD, half adversarial.
    cfg, _ = resolve_config(name, {"setting": "data-aided", "shards": str(shards), "init_from": str(tmp_path / "free"),
                                   "keep_checkpoints": "5",
                                   "duration_kimg": "0.020", "checkpoint_ticks": "1", "images_per_shard": "8"})
    train(cfg, tmp_path / "aided", adapter, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "aided" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["loss_fake"], r["loss_disc"]])).all() for r in rows)
    assert [("loss_sid" in r, "loss_adv" in r) for r in rows] == [(False, False)] * 2 + [(True, False)] + \
        [(True, True)] * 2
    assert all(0 <= r["d_real"] <= 1 and 0 <= r["d_fake"] <= 1 for r in rows)
    # The checkpoint after the frozen iterations still holds the data-free generator.
    first = tmp_path / "aided" / "checkpoints" / "ckpt-0000000008"
    start, after = _weights(free_ckpt, "generator"), _weights(first, "generator")
    assert all(torch.equal(start[k], after[k]) for k in start)
    assert list((shards / "sidrepro-cache").iterdir())  # shards encoded once, cached


def test_two_process_sharded_run_resumes_to_the_same_weights(tiny_zoo, prompt_file, tmp_path):
    """FSDP2 over 2 CPU processes (gloo): 4 iterations in one go equal 2 + 2 with a resume in between, and the
    sharded checkpoint exports to a loadable student. The stopped invocation exits 75 (continue me), never 0."""
    from sidrepro.distill.checkpoint import export_weights

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(folder: Path, stop: str | None) -> None:
        cmd = [sys.executable, "-m", "sidrepro.cli", "distill", "--teacher", "tiny-sd3", "--out", str(folder),
               "--snapshot", str(tiny_zoo["tiny-sd3"]), "--prompts", str(prompt_file), "--quiet", "--nproc", "2",
               "--set", "duration_kimg=0.016", "--set", "checkpoint_ticks=2", "--set", "snapshot_ticks=100"]
        if stop:
            cmd += ["--stop-after-kimg", stop]
        proc = subprocess.run(cmd, env=env, timeout=240, start_new_session=True, capture_output=True, text=True)
        assert proc.returncode == (EXIT_CONTINUE if stop else 0), proc.stdout[-2000:] + proc.stderr[-3000:]

    run(tmp_path / "a", None)
    run(tmp_path / "b", "0.008")
    assert not (tmp_path / "b" / "checkpoints" / "ckpt-0000000016").exists()
    run(tmp_path / "b", None)
    for name in ("generator", "fake"):
        wa = export_weights(tmp_path / "a" / "checkpoints" / "ckpt-0000000016", name)
        wb = export_weights(tmp_path / "b" / "checkpoints" / "ckpt-0000000016", name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    student = export_student(tmp_path / "a", tiny_zoo["tiny-sd3"], tmp_path / "student")
    assert len(list(generate_images(student, PROMPTS[:2], [0, 1]))) == 2


def test_gradient_checkpointing_changes_memory_not_the_result(tiny_zoo, prompt_file, tmp_path):
    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    ckpts = {}
    for flag in ("false", "true"):
        cfg, _ = resolve_config("tiny-sd3", {"prompts": str(prompt_file), "duration_kimg": "0.008",
                                             "grad_checkpointing": flag, "snapshot_ticks": "0"})
        ckpts[flag] = train(cfg, tmp_path / flag, adapter, progress=False)
    for name in ("generator", "fake"):
        a, b = _weights(ckpts["false"], name), _weights(ckpts["true"], name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_corrupt_latest_checkpoint_falls_back_and_cli_exports_and_generates(tiny_zoo, prompt_file, tmp_path, caplog):
    from sidrepro.cli import main

    run = tmp_path / "run"
    argv = ["distill", "--teacher", "tiny-sd3", "--out", str(run), "--snapshot", str(tiny_zoo["tiny-sd3"]),
            "--prompts", str(prompt_file), "--quiet", "--set", "duration_kimg=0.012", "--set", "checkpoint_ticks=1",
            "--set", "keep_checkpoints=3"]
    assert main([*argv, "--stop-after-kimg", "0.008"]) == EXIT_CONTINUE
    assert read_status(run)["state"] == "stopped"
    latest = run / "checkpoints" / "ckpt-0000000008"
    (latest / "generator.safetensors").write_bytes(b"not a safetensors file")  # a torn write
    assert main(argv) == 0  # resumes from the 4-image checkpoint, warns about the bad one
    assert "ckpt-0000000008" in caplog.text
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in rows] == [4, 8, 8, 12]  # iterations 5-8 were redone from the good checkpoint
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "student"),
                 "--snapshot", str(tiny_zoo["tiny-sd3"])]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    assert main(["generate", "--student", str(tmp_path / "student"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "images")]) == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.png", "000001.png"]


def test_precomputed_prompt_embeddings_and_parked_encoders(tiny_zoo, prompt_file, tmp_path):
    """Data-free with the prompt file encoded once into a text cache: the text encoders run only while the cache is
    built (and for the empty prompt), not per batch."""
    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    calls = []
    encode = adapter._encode
    adapter._encode = lambda prompts: calls.append(len(prompts)) or encode(prompts)
    cfg, _ = resolve_config("tiny-sd3", {"prompts": str(prompt_file), "duration_kimg": "0.016",
                                         "precompute_text": "true", "park_encoders": "true", "snapshot_ticks": "0",
                                         "cache_dir": str(tmp_path / "cache")})
    ckpt = train(cfg, tmp_path / "run", adapter, progress=False)
    assert sum(calls) == len(PROMPTS)  # every prompt encoded exactly once, 4 iterations x 2 phases x 4 drawn
    assert list((tmp_path / "cache" / "prompt-shards").glob("train_*.parquet"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["loss_sid"])) for r in rows)
    assert (ckpt / "generator.safetensors").exists()

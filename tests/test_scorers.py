"""The four preference scorers on tiny random-weight models of their real classes, offline.

Why equality checks and not better-vs-degraded: with random weights none of the four metrics means anything (a
random MLP on random CLIP features, a random BLIP, random CLIP towers), so "a sharp image beats a blurred one" would
hold or fail by chance. Each scorer is instead compared, image by image, with its reference implementation run on
the same files, captions and weights (``tests/scorer_reference.py``): the ``hpsv2`` package's ``score``, the
``ImageReward`` package's ``load`` + ``score``, ImageReward's own ``AestheticScore`` (improved-aesthetic-predictor on
OpenAI ``clip``) for the aesthetic score, and the PickScore model-card code under transformers 4.36. Those run in the
scorer environments built from workflow/envs/*.txt where the workflow keeps them (slow: the first build on a machine
takes about a minute per env, the main env's torch being hard-linked; later sessions and clones reuse them).
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidrepro.cli import main
from sidrepro.envs import check_pins, ensure_env, env_dir_for, env_python, python_version
from sidrepro.evaluate import scorers
from sidrepro.evaluate.scorers.base import ScorerError, read_samples, read_weights

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).with_name("scorer_reference.py")
CAPTIONS = ["a red cube on a table", "Two cats asleep on a sofa!", "a lighthouse at dusk, oil painting",
            "", "a bowl of fruit " * 30, "an old bicycle leaning on a wall"]  # empty and > 77 tokens on purpose


def _images(n: int, size: int = 256) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(n):
        if k % 3 == 0:
            img = rng.integers(0, 256, (size, size, 3))
        elif k % 3 == 1:
            img = np.stack([xx * 255, yy * 255, (1 - xx) * 255 * (k / n)], -1)
        else:
            img = np.zeros((size, size, 3)) + rng.integers(0, 256, 3)
            img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rng.integers(0, 256, 3)
        out.append(img.astype(np.uint8))
    return out


def make_samples(folder: Path, captions: list[str] = CAPTIONS, size: int = 256) -> Path:
    """A merged sample folder as `sidrepro sample` writes it: PNGs and manifest.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, (img, caption) in enumerate(zip(_images(len(captions), size), captions, strict=True)):
        Image.fromarray(img).save(folder / f"{p:06d}.png")
        rows.append({"prompt_id": p, "caption": caption, "file": f"{p:06d}.png", "model": "tiny-sana",
                     "kind": "teacher", "model_hash": "sha256:" + "0" * 64})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return make_samples(tmp_path_factory.mktemp("scorer-samples"))


def _check_record(record: dict, name: str, out: Path, n: int) -> None:
    assert record["metric"] == name and record["num_images"] == n and record["tiny"] is True
    assert isinstance(record[name], float) and np.isfinite(record[name]) and record["std"] > 0
    assert record["model_id"] == "tiny-sana" and record["model_hash"] == "sha256:" + "0" * 64
    assert record["reference"]["model_id"] and record["reference"]["weights_sha256"]
    assert all(len(v) == 64 for v in record["reference"]["weights_sha256"].values())
    assert record["versions"]["torch"] and {"version", "commit", "dirty"} <= set(record["code"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))


# ------------------------------------------------------------------------------------------ main-env scorers
@pytest.mark.parametrize("name", ["aesthetic", "pickscore"])
def test_main_env_scorer_on_tiny_weights(name, samples, tmp_path):
    weights = tmp_path / "weights"
    scorers.tiny_weights(name, weights, seed=1)
    out = tmp_path / "scores" / f"{name}.json"
    record = scorers.score_samples(name, samples, out, weights=weights, batch=4)
    _check_record(record, name, out, len(CAPTIONS))
    assert record["env"] is None and record["precision"] == "fp32"
    assert record["versions"]["open_clip_torch" if name == "aesthetic" else "transformers"]
    # the batch only changes float rounding; every image is scored against its own caption
    items = read_samples(samples)
    one = scorers.get_scorer(name).score(items, weights, batch=1)[0]
    assert record[name] == pytest.approx(float(np.mean(one)), abs=1e-4)


def test_score_command_writes_the_record(samples, tmp_path, capsys):
    weights, out = tmp_path / "w", tmp_path / "pick.json"
    assert main(["score-weights", "--scorer", "pickscore", "--tiny", "--out", str(weights)]) == 0
    assert main(["score", "--scorer", "pickscore", "--samples", str(samples), "--weights", str(weights),
                 "--out", str(out), "--device", "cpu", "--batch", "3"]) == 0
    assert f"pickscore: {json.loads(out.read_text())['pickscore']:.4f}" in capsys.readouterr().out
    # the wrong weights folder is refused with the command that makes the right one
    assert main(["score", "--scorer", "aesthetic", "--samples", str(samples), "--weights", str(weights),
                 "--out", str(tmp_path / "a.json"), "--device", "cpu"]) == 2
    assert "weights of the 'pickscore' scorer" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


# ------------------------------------------------------------------------------------------- checks around
def test_sample_folder_and_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="merge-samples"):
        read_samples(tmp_path)
    folder = make_samples(tmp_path / "s", CAPTIONS[:2], size=32)
    (folder / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.png"):
        read_samples(folder)
    with pytest.raises(ScorerError, match="sidrepro score-weights --scorer hpsv2"):
        read_weights(tmp_path / "none", "hpsv2")


@pytest.mark.parametrize("name", ["hpsv2", "image_reward"])
def test_env_scorers_refuse_a_missing_or_stale_env(name, tmp_path, capsys):
    folder = make_samples(tmp_path / "s", CAPTIONS[:2], size=32)
    with pytest.raises(ScorerError, match="runs in its own environment"):
        scorers.score_samples(name, folder, tmp_path / "o.json", weights=tmp_path / "w")
    stale = tmp_path / "env"
    (stale / "bin").mkdir(parents=True)
    (stale / "bin" / "python").touch()
    (stale / "env.json").write_text(json.dumps({"spec_sha256": "0" * 64, "python": "3.11"}))
    with pytest.raises(ScorerError, match=rf"(?s)other pins .*sidrepro env --spec workflow/envs/{name}.txt"):
        scorers.score_samples(name, folder, tmp_path / "o.json", weights=tmp_path / "w", env=stale)
    assert main(["score", "--scorer", name, "--samples", str(folder), "--weights", str(tmp_path / "w"),
                 "--out", str(tmp_path / "o.json"), "--device", "cpu"]) == 2
    assert "own environment" in capsys.readouterr().err


def test_pin_files_pin_everything_and_the_main_env_lacks_the_scorer_packages():
    for name, must in {"hpsv2": ["hpsv2x==1.2.0", "protobuf==3.20.3", "pytest==7.2.0"],
                       "image_reward": ["image-reward==1.5", "timm==0.6.13", "fairscale==0.4.13",
                                        "transformers==4.36.2"]}.items():
        spec = REPO / "workflow" / "envs" / f"{name}.txt"
        check_pins(spec)
        assert python_version(spec) == "3.11"
        lines = spec.read_text().splitlines()
        assert all(m in lines for m in must)
        assert "torch==2.14.1" in lines  # the main env's torch: equality checks compare code, not kernels
    for dist in ("hpsv2", "hpsv2x", "image-reward", "fairscale", "openai-clip"):
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version(dist)
    assert metadata.version("timm").startswith("1.") and metadata.version("pytest").startswith("9.")


def test_fetch_weights_pins_commits_and_reuses_offline(monkeypatch, tmp_path):
    """Real-weight fetching against a local fake hub: one file per group (safetensors before .bin), commits
    recorded in the lock file, scorer.json written last, and a complete folder reused with the hub unreachable."""
    from fake_hub import FakeHub, FakeRepo, dead_endpoint, isolate_hf

    from sidrepro.evaluate.scorers import aesthetic, hps, imagereward, pickscore

    isolate_hf(monkeypatch, tmp_path)
    c = "c" * 40
    repos = {
        aesthetic.CLIP_REPO: FakeRepo({"open_clip_model.safetensors": b"s" * 64, "open_clip_pytorch_model.bin":
                                       b"b" * 64, "README.md": b"x"}, commit=c),
        aesthetic.MLP_REPO: FakeRepo({aesthetic.MLP_FILE: b"m" * 32}, commit=c),
        hps.REPO: FakeRepo({"HPS_v2_compressed.pt": b"2" * 16, "HPS_v2.1_compressed.pt": b"3" * 16}, commit=c),
        imagereward.REPO: FakeRepo({"ImageReward.pt": b"i" * 16, "med_config.json": b"{}"}, commit=c),
        imagereward.TOKENIZER_REPO: FakeRepo({"vocab.txt": b"[PAD]\n", "tokenizer_config.json": b"{}",
                                              "model.safetensors": b"w" * 64}, commit=c),
        pickscore.MODEL_REPO: FakeRepo({"config.json": b"{}", "pytorch_model.bin": b"p" * 64}, commit=c),
        pickscore.PROCESSOR_REPO: FakeRepo({n: b"{}" for n in (*pickscore.PROCESSOR_FILES, "tokenizer.json")} |
                                           {"open_clip_pytorch_model.bin": b"o" * 64}, commit=c),
    }
    lock, out = tmp_path / "hub-lock.json", tmp_path / "weights"
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for name in scorers.SCORERS:
            extra = {"version": "v2.1"} if name == "hpsv2" else {}
            scorers.fetch_weights(name, out / name, lock_file=lock, **extra)
        seen = len(hub.requests)
    assert {v["commit"] for v in json.loads(lock.read_text()).values()} == {c}
    assert len(json.loads(lock.read_text())) == len(repos)
    files = {name: read_weights(out / name, name)["files"] for name in scorers.SCORERS}
    assert files["aesthetic"]["clip"].name == "open_clip_model.safetensors"
    assert not any((out / "aesthetic").rglob("*.bin"))  # one download per group
    assert files["hpsv2"]["checkpoint"].name == "HPS_v2.1_compressed.pt"
    assert sorted(p.name for p in files["pickscore"]["processor"].iterdir() if not p.name.startswith(".")) == \
        sorted([*pickscore.PROCESSOR_FILES, "tokenizer.json"])
    assert not (files["image_reward"]["tokenizer"] / "model.safetensors").exists()
    assert read_weights(out / "image_reward", "image_reward")["reference"]["revision"] == c
    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint())
    for name in scorers.SCORERS:
        extra = {"version": "v2.1"} if name == "hpsv2" else {}
        assert scorers.fetch_weights(name, out / name, lock_file=lock, **extra)["reference"]["revision"] == c
    assert seen > 0


# ------------------------------------------------------------------------- equality with the reference code
@pytest.fixture(scope="session")
def scorer_env():
    """Build (first time on a machine: about a minute) or reuse the scorer environments where the workflow keeps
    them (``sidrepro.envs.env_dir_for``); ``name -> folder``."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            spec = REPO / "workflow" / "envs" / f"{name}.txt"
            ensure_env(spec, env_dir_for(spec))
            built[name] = env_dir_for(spec)
        return built[name]

    return get


def _reference(env: Path, name: str, request: dict, tmp_path: Path) -> list[float]:
    req, ans = tmp_path / f"ref-{name}.json", tmp_path / f"ref-{name}-answer.json"
    req.write_text(json.dumps(request))
    proc = subprocess.run([str(env_python(env)), "-I", "-W", "ignore", str(REFERENCE), name, str(req), str(ans)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                               "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(ans.read_text())


def _items(samples: Path) -> list[dict]:
    return [{"file": str(s.file), "caption": s.caption} for s in read_samples(samples)]


@pytest.mark.slow
def test_env_is_reused_while_its_pins_are_unchanged(scorer_env):
    env = scorer_env("image_reward")
    stamp = (env / "env.json").stat().st_mtime_ns
    record = ensure_env(REPO / "workflow" / "envs" / "image_reward.txt", env)
    assert (env / "env.json").stat().st_mtime_ns == stamp and "image-reward==1.5" in record["freeze"]


@pytest.mark.slow
def test_hpsv2_matches_the_hpsv2_package(scorer_env, samples, tmp_path):
    env = scorer_env("hpsv2")
    weights = tmp_path / "w"
    assert main(["score-weights", "--scorer", "hpsv2", "--tiny", "--env", str(env), "--out", str(weights)]) == 0
    out = tmp_path / "hpsv2.json"
    record = scorers.score_samples("hpsv2", samples, out, weights=weights, env=env, batch=4)
    _check_record(record, "hpsv2", out, len(CAPTIONS))
    assert record["env"]["spec"] == "hpsv2.txt" and record["versions"]["hpsv2x"] == "1.2.0"
    w = read_weights(weights, "hpsv2")
    ref = _reference(env, "hpsv2", {"model_name": w["model_name"], "config": str(w["files"]["config"]),
                                    "checkpoint": str(w["files"]["checkpoint"]), "items": _items(samples)}, tmp_path)
    ours = scorers.get_scorer("hpsv2").score(read_samples(samples), weights, env=env, batch=4)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref) > 1e-2  # the tiny model tells the images apart: the comparison is not vacuous


@pytest.mark.slow
def test_image_reward_matches_the_image_reward_package(scorer_env, samples, tmp_path):
    env = scorer_env("image_reward")
    weights = tmp_path / "w"
    assert main(["score-weights", "--scorer", "image_reward", "--tiny", "--env", str(env), "--out",
                 str(weights)]) == 0
    out = tmp_path / "image_reward.json"
    record = scorers.score_samples("image_reward", samples, out, weights=weights, env=env, batch=4)
    _check_record(record, "image_reward", out, len(CAPTIONS))
    assert record["versions"]["image-reward"] == "1.5" and record["versions"]["timm"] == "0.6.13"
    assert record["checkpoint_load"]["missing"] == []
    files = read_weights(weights, "image_reward")["files"]
    ref = _reference(env, "image_reward", {k: str(files[k]) for k in ("checkpoint", "med_config", "tokenizer", "vit")}
                     | {"items": _items(samples)}, tmp_path)
    ours = scorers.get_scorer("image_reward").score(read_samples(samples), weights, env=env, batch=4)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref) > 1e-2


@pytest.mark.slow
def test_aesthetic_matches_image_rewards_aesthetic_score(scorer_env, samples, tmp_path):
    env = scorer_env("image_reward")  # has ImageReward's AestheticScore and OpenAI `clip`
    weights = tmp_path / "w"
    scorers.tiny_weights("aesthetic", weights, seed=2)
    files = read_weights(weights, "aesthetic")["files"]
    ref = _reference(env, "aesthetic", {"clip": str(files["clip"]), "mlp": str(files["mlp"]),
                                        "items": _items(samples)}, tmp_path)
    ours = scorers.get_scorer("aesthetic").score(read_samples(samples), weights, batch=4)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref) > 1e-3


@pytest.mark.slow
def test_pickscore_matches_the_model_card_code_under_transformers_4(scorer_env, samples, tmp_path):
    env = scorer_env("image_reward")  # transformers 4.36: the processor and feature API the model card was written for
    weights = tmp_path / "w"
    scorers.tiny_weights("pickscore", weights, seed=3)
    files = read_weights(weights, "pickscore")["files"]
    ref = _reference(env, "pickscore", {"model": str(files["model"]), "processor": str(files["processor"]),
                                        "items": _items(samples)}, tmp_path)
    ours = scorers.get_scorer("pickscore").score(read_samples(samples), weights, batch=4)[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)  # logit scale 100: ~1e-6 cosine -> 1e-4
    assert np.ptp(ref) > 1e-1


# ------------------------------------------------------------------------------------------------- workflow
def _dry_run(*args: str) -> dict[str, int]:
    import re
    import sys

    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--nolock", "--forceall", *args,
                           "scores"], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {}
    for line in proc.stdout.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_scores_target_runs_every_scorer_on_every_model():
    # smoke: 8 models x 4 scorers on tiny weights; the two venvs are built (or reused) by their own rule
    smoke = _dry_run("--configfile=workflow/config/smoke.yaml")
    assert {k: smoke[k] for k in ("scorer_env", "scorer_weights", "score")} == {"scorer_env": 2,
                                                                                 "scorer_weights": 4, "score": 32}
    assert "fetch" not in smoke


@pytest.mark.slow
def test_paper_scores_target_fetches_real_weights():
    paper = _dry_run()  # 34 models x 4 scorers, real weights at pinned commits
    assert {k: paper[k] for k in ("scorer_env", "scorer_weights", "score")} == {"scorer_env": 2,
                                                                                 "scorer_weights": 4, "score": 136}

"""Sharded, resumable sampling for the metrics on the tiny zoo: a distilled student, a teacher and a baseline give the
same PNGs however the captions are sharded or batched, killed shards resume without gaps or duplicates, and the
manifests say what was sampled."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidrepro.evaluate import sampling
from sidrepro.evaluate.sampling import (
    IncompleteSamplesError,
    ModelSpec,
    image_seed,
    load_sampler,
    manifest_name,
    merge_manifests,
    model_hash,
    sample_shard,
    to_png,
)

# (prompt_id, image_id, caption); ids out of order and not contiguous, one empty caption.
CAPTIONS = [(17, 9001, "a red cube on a table"), (3, 9002, "two cats asleep"), (8, 9003, "a lighthouse at dusk"),
            (41, 9004, ""), (5, 9005, "a city street in the rain"), (12, 9006, "an old bicycle"),
            (30, 9007, "a plate of pasta")]
KINDS = ["student", "teacher", "baseline"]


@pytest.fixture(scope="module")
def student_folder(tiny_zoo, tmp_path_factory) -> Path:
    """A tiny-sd3 student after 2 SiD iterations at 64 px, exported."""
    from sidrepro.distill.config import resolve_config
    from sidrepro.distill.export import export_student
    from sidrepro.distill.trainer import train
    from sidrepro.teachers.load import load_teacher

    tmp = tmp_path_factory.mktemp("student")
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(c for _, _, c in CAPTIONS if c) + "\n")
    cfg, sources = resolve_config("tiny-sd3", {"prompts": str(prompts), "duration_kimg": "0.008",
                                               "checkpoint_ticks": "1", "snapshot_ticks": "100"})
    train(cfg, tmp / "run", load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"]), progress=False, sources=sources)
    return export_student(tmp / "run", tiny_zoo["tiny-sd3"], tmp / "export")


@pytest.fixture(scope="module")
def specs(tiny_zoo, student_folder) -> dict[str, ModelSpec]:
    return {"student": ModelSpec.student(student_folder),
            "teacher": ModelSpec.teacher("tiny-sana", tiny_zoo["tiny-sana"], steps=2),
            "baseline": ModelSpec.baseline("tiny-flux-schnell", tiny_zoo["tiny-flux-schnell"])}


@pytest.fixture(scope="module")
def samplers(specs) -> dict[str, sampling.Sampler]:
    return {k: load_sampler(s) for k, s in specs.items()}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("kind", KINDS)
def test_three_shards_equal_one_shard_and_any_image_regenerates_alone(kind, samplers, tmp_path):
    smp = samplers[kind]
    one, three = tmp_path / "one", tmp_path / "three"
    sample_shard(smp, CAPTIONS, one, batch=4, resolution_out=64, progress=False)
    for k in range(3):
        m = sample_shard(smp, CAPTIONS, three, shard=k, num_shards=3, batch=4, resolution_out=64, progress=False)
        assert [r["prompt_id"] for r in _rows(m)] == [p for p, _, _ in CAPTIONS[k::3]]  # strided assignment
    a, b = _pngs(one), _pngs(three)
    assert sorted(a) == sorted(f"{p:06d}.png" for p, _, _ in CAPTIONS) and a == b
    rows_a, rows_b = _rows(merge_manifests(one)), _rows(merge_manifests(three))
    assert [r["prompt_id"] for r in rows_b] == sorted(p for p, _, _ in CAPTIONS)
    assert [r["sha256"] for r in rows_a] == [r["sha256"] for r in rows_b]
    assert len({r["sha256"] for r in rows_a}) == len(CAPTIONS)  # seeds differ per prompt id
    # One image alone, from its seed, padded to the shard's batch: the same bytes.
    p, _, caption = CAPTIONS[4]
    alone = smp([caption], [image_seed(0, p)], pad_to=4)
    assert to_png(alone[0], 64) == a[f"{p:06d}.png"]


def test_student_sampler_matches_generate_images_for_one_image(samplers, student_folder):
    """The per-image-noise loop is the SiD sampler: one image draws exactly what ``generate`` draws."""
    from sidrepro.distill.export import generate_images

    prompts, seeds = ["two cats asleep", "a plate of pasta"], [image_seed(0, 3), image_seed(0, 30)]
    ref = [img for _, _, img in generate_images(student_folder, prompts, seeds, batch=1)]
    ours = [samplers["student"]([p], [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert all(torch.equal(x, y) for x, y in zip(ref, ours, strict=True))


def test_killed_shard_resumes_without_duplicates_or_gaps(samplers, tmp_path):
    smp = samplers["student"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    sample_shard(smp, CAPTIONS, ref, shard=1, num_shards=2, batch=2, resolution_out=64, progress=False)
    mine = [p for p, _, _ in CAPTIONS[1::2]]  # 3, 41, 12
    manifest = sample_shard(smp, CAPTIONS, out, shard=1, num_shards=2, batch=2, resolution_out=64,
                            progress=False, limit=1)  # stopped after one image
    assert [r["prompt_id"] for r in _rows(manifest)] == mine[:1]
    # What a SIGKILL can leave: the next PNG renamed into place but no row for it, a torn row, a temp file.
    (out / f"{mine[1]:06d}.png").write_bytes(b"not the image")
    with open(manifest, "ab") as fh:
        fh.write(b'{"prompt_id": 41, "image_id": 90')
    (out / f".{mine[2]:06d}.png.k3j9x_2a.tmp").write_bytes(b"partial")
    (out / f".{mine[2] + 1:06d}.png.k3j9x_2a.tmp").write_bytes(b"another shard's image in flight")
    sample_shard(smp, CAPTIONS, out, shard=1, num_shards=2, batch=2, resolution_out=64, progress=False)
    assert [r["prompt_id"] for r in _rows(manifest)] == mine
    assert _pngs(out) == _pngs(ref) and [t.name for t in out.glob(".*.tmp")] == [f".{mine[2] + 1:06d}.png.k3j9x_2a.tmp"]
    # A PNG lost after its row was written is regenerated, its stale row replaced; a complete shard is a no-op.
    (out / f"{mine[0]:06d}.png").unlink()
    sample_shard(smp, CAPTIONS, out, shard=1, num_shards=2, batch=2, resolution_out=64, progress=False)
    sample_shard(smp, CAPTIONS, out, shard=1, num_shards=2, batch=2, resolution_out=64, progress=False)
    assert sorted(r["prompt_id"] for r in _rows(manifest)) == sorted(mine) and _pngs(out) == _pngs(ref)
    # The other shard is missing: merging names its ids and the shard to rerun.
    with pytest.raises(IncompleteSamplesError, match=r"4 of 7 images missing \(prompt ids 5, 8, 17, 30\); "
                                                     r"rerun shard\(s\) 0 of 2") as err:
        merge_manifests(out)
    assert err.value.missing == [5, 8, 17, 30]
    sample_shard(smp, CAPTIONS, out, shard=0, num_shards=2, batch=2, resolution_out=64, progress=False)
    assert [r["prompt_id"] for r in _rows(merge_manifests(out))] == sorted(p for p, _, _ in CAPTIONS)


_KILL_SCRIPT = textwrap.dedent("""
    import json, sys
    from sidrepro.evaluate.sampling import ModelSpec, sample_shard
    captions = [tuple(r) for r in json.loads(sys.argv[3])]
    spec = ModelSpec.teacher("tiny-sana", sys.argv[1], steps=2)
    sample_shard(spec, captions, sys.argv[2], batch=1, resolution_out=64, progress=False)
""")


def test_sigkilled_shard_resumes(tiny_zoo, specs, tmp_path):
    """A real SIGKILL part-way through a shard (batch 1, so images land one by one), then a rerun."""
    captions = [(i, i, f"caption number {i}") for i in range(40)]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tiny_zoo["tiny-sana"]), str(out),
                             json.dumps(captions)], env=env)
    manifest = out / manifest_name(0, 1)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = [json.loads(line)["prompt_id"] for line in manifest.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(killed) < len(captions)
    sample_shard(specs["teacher"], captions, out, batch=1, resolution_out=64, progress=False)
    rows = _rows(merge_manifests(out))
    assert [r["prompt_id"] for r in rows] == list(range(40))
    assert all(hashlib.sha256((out / r["file"]).read_bytes()).hexdigest() == r["sha256"] for r in rows)


def test_batch_size_moves_pixels_by_at_most_one_level(samplers, tmp_path):
    """Per-image generators make the batch size irrelevant to the random draws; what remains is floating-point
    kernels chosen by forward shape (the teacher's CFG pass doubles it): at most one uint8 level, rarely."""
    smp = samplers["teacher"]
    for b in (3, 8):
        sample_shard(smp, CAPTIONS, tmp_path / f"b{b}", batch=b, resolution_out=64, progress=False)
    for p, _, _ in CAPTIONS:
        x, y = (torch.from_numpy(np.asarray(Image.open(tmp_path / f"b{b}" / f"{p:06d}.png"))).int() for b in (3, 8))
        diff = (x - y).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    assert [r["batch"] for r in _rows(tmp_path / "b3" / manifest_name(0, 1))] == [3] * len(CAPTIONS)


def test_manifest_fields_plan_and_256px_pngs(samplers, tmp_path):
    smp = samplers["baseline"]
    manifest = sample_shard(smp, CAPTIONS[:2], tmp_path, batch=2, seed=5, progress=False)
    assert manifest.name == "manifest-000-of-001.jsonl"
    rows = _rows(manifest)
    for row, (p, img_id, caption) in zip(rows, CAPTIONS[:2], strict=True):
        assert {"prompt_id": p, "image_id": img_id, "caption": caption, "seed": 5, "image_seed": 5 * 2**32 + p,
                "kind": "baseline", "model": "tiny-flux-schnell", "revision": "zoo:seed=0", "steps": 4,
                "guidance": 0.0, "resolution": 64, "resolution_out": 256, "file": f"{p:06d}.png", "dtype": "float32",
                "device": "cpu", "batch": 2}.items() <= row.items()
        assert row["model_hash"] == smp.record.model_hash and row["model_hash"].startswith("sha256:")
        png = tmp_path / row["file"]
        assert hashlib.sha256(png.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (256, 256) and im.mode == "RGB"
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["prompt_ids"] == [17, 3] and plan["model"]["name"] == "tiny-flux-schnell" and plan["seed"] == 5
    # A folder holds one plan: another seed (or model, shard count, caption list) is refused, not mixed in.
    with pytest.raises(ValueError, match="seed: folder has 5, this run 0"):
        sample_shard(smp, CAPTIONS[:2], tmp_path, batch=2, progress=False)
    with pytest.raises(ValueError, match="model"):
        sample_shard(samplers["teacher"], CAPTIONS[:2], tmp_path, batch=2, seed=5, progress=False)
    with pytest.raises(ValueError, match="unique"):
        sample_shard(smp, [(1, 1, "a"), (1, 2, "b")], tmp_path / "dup", progress=False)
    # A retrained model in the workflow: the old samples move aside whole and the folder starts afresh.
    old_png = (tmp_path / "000017.png").read_bytes()
    sample_shard(samplers["teacher"], CAPTIONS[:2], tmp_path, batch=2, seed=5, progress=False,
                 on_plan_change="restart")
    assert json.loads((tmp_path / "plan.json").read_text())["model"]["name"] == "tiny-sana"
    moved = list((tmp_path.parent / ".superseded").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(tmp_path.name + "-")
    assert (moved[0] / "000017.png").read_bytes() == old_png and (moved[0] / "plan.json").exists()


def test_student_and_teacher_records(samplers):
    st, te = samplers["student"].record, samplers["teacher"].record
    assert (st.kind, st.name, st.steps, st.guidance, st.resolution) == ("student", "student-of-tiny-sd3", 4, None, 64)
    assert st.revision.startswith("ckpt-")
    assert (te.kind, te.name, te.steps, te.guidance, te.revision) == ("teacher", "tiny-sana", 2, 4.5, "zoo:seed=0")
    with pytest.raises(ValueError, match="without guidance"):
        ModelSpec("student", Path("x"), guidance=2.0)
    with pytest.raises(ValueError, match="unknown model kind"):
        ModelSpec("pipeline", Path("x"))


def test_model_hash_reads_only_ends_of_huge_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "HASH_FULL_LIMIT", 64)
    monkeypatch.setattr(sampling, "HASH_CHUNK", 16)
    small, big = tmp_path / "small.json", tmp_path / "big.safetensors"
    small.write_bytes(b"x" * 40)
    big.write_bytes(bytes(range(200)))
    files = [("t/small.json", small), ("t/big.safetensors", big)]
    h = model_hash(files)
    assert h == model_hash(list(reversed(files))) and h.startswith("sha256:")
    big.write_bytes(bytes(range(100)) + b"\xff" + bytes(range(101, 200)))  # the middle of a huge file: unseen
    assert model_hash(files) == h
    big.write_bytes(b"\xff" + bytes(range(1, 200)))  # its first bytes: seen
    assert model_hash(files) != h
    big.write_bytes(bytes(range(200)))
    small.write_bytes(b"x" * 20 + b"y" + b"x" * 19)  # small files: every byte
    assert model_hash(files) != h

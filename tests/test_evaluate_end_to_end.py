"""COCO reference -> sharded sampling -> FID and CLIP through the command line, on a synthetic COCO-layout folder,
a tiny teacher and a tiny local CLIP model (the same code path as the real networks)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from sidrepro.cli import main


def _synthetic_coco(root: Path, n: int = 16) -> Path:
    rng = random.Random(0)
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    words = ["red", "blue", "cat", "dog", "car", "tree", "house", "boat", "sky", "table"]
    for i in range(n):
        w, h = rng.choice([(64, 48), (48, 64), (80, 80)])
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(6):
            x, y = rng.randrange(w - 8), rng.randrange(h - 8)
            img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
        name = f"COCO_val2014_{i + 1:012d}.jpg"
        img.save(root / "val2014" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        annotations.append({"id": 100 + i, "image_id": i + 1, "caption": f"a {rng.choice(words)} {rng.choice(words)}"})
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images,
                                                                             "annotations": annotations}))
    return root


@pytest.mark.slow
def test_reference_sample_evaluate(tiny_zoo, tmp_path):
    from sidrepro.evaluate.clip_score import tiny_clip_checkpoint

    coco = _synthetic_coco(tmp_path / "coco")
    ref = tmp_path / "ref"
    assert main(["coco", "--coco-dir", str(coco), "--out", str(ref)]) == 0
    samples = tmp_path / "samples"
    for shard in (0, 1):
        assert main(["sample", "--teacher", "tiny-sd3", "--snapshot", str(tiny_zoo["tiny-sd3"]), "--reference",
                     str(ref), "--out", str(samples), "--shard", str(shard), "--num-shards", "2", "--steps", "2",
                     "--quiet"]) == 0
    from sidrepro.evaluate.sampling import merge_manifests

    merge_manifests(samples)
    name, weights = tiny_clip_checkpoint(tmp_path / "clip")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--samples", str(samples), "--reference", str(ref), "--out", str(out),
                 "--clip-model", name, "--clip-weights", str(weights)]) == 2  # 16 images, not the protocol's 10k
    assert main(["evaluate", "--samples", str(samples), "--reference", str(ref), "--out", str(out), "--partial",
                 "--clip-model", name, "--clip-weights", str(weights)]) == 0
    record = json.loads(out.read_text())
    assert record["num_images"] == 16 and record["complete"] is False
    assert record["fid"] > 0 and -1 <= record["clip_score"] <= 1
    assert record["fid_mode"] == "legacy_tensorflow" and record["kind"] == "teacher"
    assert len(record["reference_stats_sha256"]) == 64 and record["model_hash"].startswith("sha256:")
    assert main(["evaluate", "--samples", str(samples), "--reference", str(ref), "--out", str(out),
                 "--protocol", "fancy"]) == 2

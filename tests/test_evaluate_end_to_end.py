"""COCO reference -> sharded sampling -> FID and CLIP through the command line, on a synthetic COCO-layout folder,
a tiny teacher and a tiny local CLIP model (the same code path as the real networks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sidrepro.cli import main


def _synthetic_coco(root: Path, n: int = 16) -> Path:
    """The smoke workflow's synthetic COCO-2014 val layout (workflow/scripts/synthetic_coco.py)."""
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "synthetic_coco.py"
    spec = importlib.util.spec_from_file_location("synthetic_coco", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(root, n=n, seed=0)


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

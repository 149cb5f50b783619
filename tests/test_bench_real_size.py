"""The real-size snapshots of the GPU benchmarks: the real transformer configuration with the tiny encoders' text
widths, loadable by the real teacher's adapter, at the resolution that gives the real latent grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from real_size import build_snapshot

from sidrepro.teachers.architectures import ARCHITECTURES
from sidrepro.teachers.load import load_teacher


@pytest.mark.parametrize("name", ["sana-1.6b", "sd3-medium"])
def test_real_size_snapshot_has_the_real_transformer_shapes(tmp_path, name):
    folder, resolution = build_snapshot(name, tmp_path, layers=1)
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    real = ARCHITECTURES[name].config
    assert cfg["num_attention_heads"] == real["num_attention_heads"] and cfg["num_layers"] == 1
    assert cfg["attention_head_dim"] == real["attention_head_dim"]
    adapter = load_teacher(name, folder)
    assert adapter.latent_shape(resolution) == ARCHITECTURES[name].latent  # the real latent grid
    net = adapter.load_transformer()
    assert net.dtype == torch.float32  # saved in bf16, loaded in the run's weight dtype
    cond = adapter.encode_prompts(["a red cube"])
    x = adapter.initial_noise(1, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v, _ = adapter.bind(net, cond)(x, torch.full((1,), 0.5))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_unknown_teacher_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no real-size build for 'sd9'"):
        build_snapshot("sd9", tmp_path)

"""Snapshots with a real teacher's transformer at full size and random weights, for benchmarks on a GPU where the
real weights cannot be downloaded.

The transformer is built from the real ``transformer/config.json`` values (``sidrepro.teachers.architectures``);
the text encoders, tokenizers, scheduler and VAE are the family's tiny zoo entry, whose VAE compresses 8x (SANA's
DC-AE: 32x). So the resolution is chosen to give the real latent grid (SANA-1.6B at 512 px: 16 x 16 latents, here
128 px; SD3 at 1024 px: 128 x 128, here 1024 px): the transformer sees the real number of image tokens and the
real text lengths. Only the transformer's input projections of the text differ (tiny encoder widths instead of
2,304 / 4,096), a few million of its parameters; text encoding is cheaper than with the real encoders.

    from real_size import build_snapshot          # from a script in bench/
    folder, resolution = build_snapshot("sana-1.6b", Path("/tmp/snap"), device="cuda")
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sidrepro.teachers.architectures import ARCHITECTURES
from sidrepro.teachers.zoo import build_model

# The zoo entry whose encoders, scheduler and VAE stand in for each real teacher's.
ZOO_ENTRY = {"sana-0.6b": "tiny-sana", "sana-1.6b": "tiny-sana", "sd3-medium": "tiny-sd3",
             "sd3.5-medium": "tiny-sd35", "sd3.5-large": "tiny-sd35", "flux-dev-1024": "tiny-flux"}
# Transformer inputs whose width is the text encoders': kept at the tiny encoders' values.
TEXT_WIDTHS = ("caption_channels", "joint_attention_dim", "pooled_projection_dim")
ZOO_VAE_FACTOR = 8


def real_config(name: str, tiny_config: dict, layers: int | None = None, heads: int | None = None) -> dict:
    """The real transformer config of ``name`` with the tiny entry's text widths (and ``layers`` blocks per stack or
    ``heads`` attention heads when given: a narrower model with the same operators per block, for CPU checks)."""
    cfg = {k: v for k, v in tiny_config.items() if not k.startswith("_")}
    cfg.update(ARCHITECTURES[name].config)
    for key in TEXT_WIDTHS:
        if key in tiny_config:
            cfg[key] = tiny_config[key]
    if layers is not None:
        cfg["num_layers"] = layers
        if "num_single_layers" in cfg:
            cfg["num_single_layers"] = layers
        if cfg.get("dual_attention_layers"):
            cfg["dual_attention_layers"] = tuple(i for i in cfg["dual_attention_layers"] if i < layers)
    if heads is not None:
        width = heads * cfg["attention_head_dim"]
        cfg["num_attention_heads"] = heads
        if "cross_attention_dim" in cfg:  # SANA: cross-attention at the model width
            cfg.update(num_cross_attention_heads=heads, cross_attention_head_dim=cfg["attention_head_dim"],
                       cross_attention_dim=width)
        if "caption_projection_dim" in cfg:  # SD3: text tokens projected to the model width
            cfg["caption_projection_dim"] = width
    return cfg


def build_snapshot(name: str, out: Path, *, device: str = "cpu", layers: int | None = None,
                   heads: int | None = None, seed: int = 0) -> tuple[Path, int]:
    """Write ``out / name`` (a diffusers snapshot whose transformer is ``name``'s at full size, random bf16 weights)
    and return it with the resolution that gives the real latent grid."""
    import diffusers

    if name not in ZOO_ENTRY:
        raise ValueError(f"no real-size build for {name!r}; choose one of {', '.join(ZOO_ENTRY)}")
    arch = ARCHITECTURES[name]
    tiny = build_model(ZOO_ENTRY[name], out / "zoo", seed=seed)
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny, folder)
    tiny_cfg = json.loads((folder / "transformer" / "config.json").read_text())
    shutil.rmtree(folder / "transformer")
    cls = getattr(diffusers, arch.transformer_class)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the GPU takes seconds where the CPU takes minutes
        net = cls.from_config(real_config(name, tiny_cfg, layers, heads))
    net.to(torch.bfloat16).save_pretrained(folder / "transformer", max_shard_size="20GB")
    del net
    return folder, arch.latent[1] * ZOO_VAE_FACTOR

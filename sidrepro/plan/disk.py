"""Disk written per stage of a workflow config, from parameter counts and stated assumptions (GB = 1e9 bytes).

- checkpoints: the trainer keeps ``keep_checkpoints`` checkpoints per run, each the generator's and the fake
  network's weights (fp32 under AMP, bf16 in pure bf16) and both networks' Adam moments widened to fp32
  (``sidrepro/distill/checkpoint.py``): 24 (AMP) or 20 (bf16) bytes per transformer parameter; one more is on disk
  while the next is written, before the oldest is deleted.
- students: the exported transformer in fp32 (``sidrepro/distill/export.py``); the teacher's encoders and VAE are
  hard-linked from the snapshot (no extra space on the same filesystem).
- encoded training data: each teacher's shard caches (data-aided: fp32 latent + text conditioning per image) and,
  with ``precompute_text`` (SD3/FLUX data-free), its prompt caches (text only), one cache file per shard of
  ``images_per_shard`` rows that the run reaches (``ceil(duration / images_per_shard)``, at most all shards).
  Conditioning is stored in the text encoders' dtype (``text_dtype``, else the weights': fp32 under AMP).
- samples: PNG at about ``PNG_RATIO`` of the raw RGB bytes (assumed, natural images); COCO rows at 256 px, GenEval
  rows at ``geneval.resolution_out``.
- snapshots: the registry's download sizes; data: the dataset's assumed size and COCO-2014 val's official archive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..teachers.architectures import ARCHITECTURES
from .cost import (
    COCO_VAL_GB,
    DATASET_GB_PER_IMAGE,
    DATASET_SHARDS,
    DistillRun,
    Sampling,
    dataset_gb,
    dataset_images,
    latent_bytes,
)
from .models import ARCH_OF, LORA_GB, params, snapshot_repos

GB = 1e9
PNG_RATIO = 0.5  # assumed: a PNG of a natural image holds about half its raw RGB bytes
COCO_VAL_IMAGES = 40_504
STATS_GB = (2048 * 2048 + 2048) * 8 / GB  # one FID statistics file: mu and sigma of 2048-d features, float64
REFERENCE_PX = 256


@dataclass(frozen=True)
class Stage:
    """Disk one stage writes: ``gb`` (None where not modelled), how it was sized and on what basis."""

    stage: str
    gb: float | None
    basis: str
    how: str


def png_gb(px: int, images: int) -> float:
    """GB of ``images`` PNGs of ``px`` x ``px`` RGB at ``PNG_RATIO`` of their raw bytes."""
    return images * px * px * 3 * PNG_RATIO / GB


def checkpoint_gb(run: DistillRun) -> float | None:
    """One checkpoint of a run (GB), or None for a tiny zoo teacher."""
    arch = ARCH_OF.get(run.teacher)
    if arch is None:
        return None
    weight = 2 if run.cfg.precision == "bf16" else 4
    return params(arch) * (2 * weight + 2 * 2 * 4) / GB


def cache_gb(run: DistillRun) -> float | None:
    """The encoded data one run reads (GB): a data-aided run's shard cache, a precompute_text run's prompt cache;
    None for a tiny zoo teacher."""
    arch = ARCH_OF.get(run.teacher)
    cfg = run.cfg
    images = run.setting == "data-aided"
    if arch is None or not (images or cfg.precompute_text):
        return None if arch is None else 0.0
    a = ARCHITECTURES[arch]
    text = 2 if cfg.text_dtype == "bf16" or (not cfg.text_dtype and cfg.precision == "bf16") else 4
    per = (a.text_tokens * a.text_dim + a.pooled_dim) * text + (latent_bytes(arch, cfg.resolution) if images else 0)
    shards = min(DATASET_SHARDS, math.ceil(cfg.duration_kimg * 1000 / cfg.images_per_shard))
    return shards * cfg.images_per_shard * per / GB


def stages(config: dict[str, Any], runs: dict[tuple, DistillRun], sampling: dict[str, Sampling]) -> list[Stage]:
    """Every stage's disk (see the module docstring)."""
    return [*_inputs(config), *_training(config, runs), *_samples(config, sampling)]


def _inputs(config: dict[str, Any]) -> list[Stage]:
    data = config["data"]
    repos = snapshot_repos(config)
    if config["source"] == "zoo":
        out = [Stage("snapshots (zoo)", None, "-", "tiny zoo models, built locally")]
    else:
        out = [Stage("snapshots (fetch)", sum(repos.values()), "registry",
                     f"{len(repos)} hub repos: registry download_gb (LoRA repos assumed {LORA_GB:g} GB)")]
    if "dataset" in data["shards"]:
        out.append(Stage("dataset (fetch_dataset)", dataset_gb(), "assumed",
                         f"{DATASET_SHARDS} shards, {dataset_images():,} images x {DATASET_GB_PER_IMAGE * 1e3:g} MB "
                         "(the fetch checks the hub's real sizes)"))
    else:
        out.append(Stage("dataset", None, "-", "synthetic shards (tiny)" if "synthetic" in data["shards"] else
                         f"your shards in {data['shards'].get('dir')}"))
    synthetic = data["coco"].get("synthetic")
    if synthetic:
        out.append(Stage("COCO-2014 val", None, "-", f"{synthetic} synthetic images (tiny)"))
    else:
        out.append(Stage("COCO-2014 val (fetch_coco)", COCO_VAL_GB, "assumed", "val2014 JPEGs (the 6.6 GB zip)"))
    n_ref = synthetic or COCO_VAL_IMAGES
    out.append(Stage("reference: 256 px PNG + FID statistics", png_gb(REFERENCE_PX, n_ref) + STATS_GB, "assumed",
                     f"{n_ref:,} x {REFERENCE_PX} px PNG at {PNG_RATIO:g} of raw RGB + {STATS_GB * 1e3:.0f} MB stats"))
    return out


def _training(config: dict[str, Any], runs: dict[tuple, DistillRun]) -> list[Stage]:
    if config["source"] == "zoo":
        return [Stage(name, None, "-", "tiny zoo teachers (not modelled)") for name in
                ("encoded training data (shard/prompt caches)", "checkpoints (distill)", "students (export)")]
    per_teacher: dict[str, float] = {}
    for r in runs.values():
        per_teacher[r.teacher] = per_teacher.get(r.teacher, 0.0) + (cache_gb(r) or 0.0)
    largest = sorted(per_teacher.items(), key=lambda kv: -kv[1])[:2]
    ckpts = [(r, checkpoint_gb(r) or 0.0) for r in runs.values()]
    return [
        Stage("encoded training data (shard/prompt caches)", sum(per_teacher.values()), "estimate",
              "runs' shards reached x images_per_shard x (fp32 latent + text conditioning); largest: " +
              ", ".join(f"{t} {gb / 1e3:.1f} TB" for t, gb in largest)),
        Stage("checkpoints (distill)", sum(r.cfg.keep_checkpoints * gb for r, gb in ckpts), "derived",
              f"{len(runs)} runs x keep_checkpoints x (2 weights + 4 fp32 Adam moments) per parameter; "
              f"+{max(gb for _, gb in ckpts):.0f} GB while one is written"),
        Stage("students (export)", sum(4 * params(ARCH_OF[t]) / GB for (t, _s) in runs), "derived",
              f"{len(runs)} fp32 transformers; encoders and VAE hard-linked"),
    ]


def _samples(config: dict[str, Any], sampling: dict[str, Sampling]) -> list[Stage]:
    coco = sum(s.coco_images for s in sampling.values())
    out = [Stage("samples (COCO subset, 256 px PNG)", png_gb(REFERENCE_PX, coco), "assumed",
                 f"{coco:,} images of {len(sampling)} models")]
    g = config.get("geneval")
    if g:
        px = g.get("resolution_out", 512)
        n = sum(s.geneval_images for s in sampling.values())
        models = sum(1 for s in sampling.values() if s.geneval_images)
        out.append(Stage(f"GenEval samples ({px} px PNG)", png_gb(px, n), "assumed",
                         f"{n:,} images of {models} models"))
    return out

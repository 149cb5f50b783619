"""One flat run configuration for SiD distillation of a DiT teacher, its per-teacher presets, and the resolution
of user overrides into the config a run writes next to its outputs.

Every value carries its source: ``code`` (fixed by the official code for every model), ``script`` (the stored SANA
run script), ``readme`` (the official README), ``uncertain`` (no stored source settles it: spec §10.2 and §15 give
the best guess, labelled as such in the resolved config), ``tiny`` (the zoo presets) or ``user`` (an override).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..sid.sampler import NOISE_TYPES
from ..sid.weighting import WEIGHTINGS

SETTINGS = ("data-free", "data-aided")
PRECISIONS = ("amp", "bf16", "fp32")


@dataclass(frozen=True)
class RunConfig:
    """Everything one distillation run needs. Units are in the names (``_kimg`` = thousands of images)."""

    teacher: str
    setting: str = "data-free"
    # Inputs. Empty paths take the defaults of the command line (snapshot folder, zoo folder).
    snapshot: str = ""  # the teacher's local snapshot folder
    prompts: str = ""  # data-free: one prompt per line
    forbidden_captions: str = ""  # evaluation captions the prompts must not contain (COCO)
    shards: str = ""  # data-aided: image-text parquet shards (midjourney-v6-llava layout)
    caption_column: str = "llava"
    image_column: str = "image"
    images_per_shard: int = 19_720
    cache_dir: str = ""  # encoded shards (default: SHARDS/sidrepro-cache), shared by runs of the same teacher
    init_from: str = ""  # data-aided: the data-free run folder whose latest generator it continues from
    # Data-free: encode the prompt file once into cached embeddings (in shards of images_per_shard prompts) instead
    # of encoding every batch; with park_encoders the text encoders then stay on the CPU between shard encodings.
    precompute_text: bool = False
    park_encoders: bool = False  # text encoders and VAE on the CPU, brought to the device only to encode
    # Method (spec §2-§6).
    resolution: int = 0  # 0: the teacher's own
    num_steps: int = 4
    init_timestep: int = 999
    noise: str = "fresh"
    alpha: float = 1.0
    weighting: str = "1_minus_sigma"
    cfg_train_fake: float = 4.5
    cfg_eval_fake: float = 4.5
    cfg_eval_real: float = 4.5
    ls: float = 1.0
    lsg: float = 100.0
    lsd: float = 1.0
    lsg_gan: float = 1.0
    freeze_kimg: float = 20.0  # data-aided: generator frozen until here ...
    mix_kimg: float = 40.0  # ... then SiD only until here, then half SiD, half adversarial
    # Optimisation.
    lr: float = 5e-6  # fake network
    glr: float = 5e-6  # generator
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # value clipping of gradients (pure bf16 on SD3/FLUX: 1.0); 0 = off
    precision: str = "amp"  # amp: fp32 weights + bf16 autocast; bf16: bf16 weights; fp32: no autocast
    batch: int = 256  # global images per iteration (each phase sees a full batch)
    batch_gpu: int = 8  # micro-batch per device; accumulation fills the per-rank share
    duration_kimg: float = 1000.0
    grad_checkpointing: bool = True
    text_dtype: str = ""  # "" = the weights' dtype; "bf16" for SANA's Gemma (spec §7.4)
    # Bookkeeping (a tick is 2,048 images as in the official loop).
    tick_kimg: float = 2.048
    snapshot_ticks: int = 25  # sample grids (and later metrics); 0 = never
    checkpoint_ticks: int = 25
    keep_checkpoints: int = 3
    seed: int = 0
    # The run stops after more than this many bad iterations. Non-finite samples are dropped from the loss and
    # non-finite gradient entries replaced, so an iteration still steps; it is bad only when a phase's loss over
    # the kept samples is not finite, or when a phase dropped every sample of the global batch.
    max_bad_iters: int = 100

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"config key {key!r}: {why}")

        if self.setting not in SETTINGS:
            raise bad("setting", f"{self.setting!r} is not one of {', '.join(SETTINGS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.noise not in NOISE_TYPES:
            raise bad("noise", f"{self.noise!r} is not one of {', '.join(NOISE_TYPES)}")
        if self.weighting not in WEIGHTINGS:
            raise bad("weighting", f"{self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if self.num_steps < 1 or not 0 < self.init_timestep <= 999:
            raise bad("num_steps/init_timestep", "need num_steps >= 1 and 0 < init_timestep <= 999")
        if self.batch < 1 or self.batch_gpu < 1:
            raise bad("batch", "batch and batch_gpu must be >= 1")
        if self.lr <= 0 or self.glr <= 0 or self.adam_eps <= 0:
            raise bad("lr", "lr, glr and adam_eps must be > 0")
        if self.duration_kimg <= 0 or self.tick_kimg <= 0:
            raise bad("duration_kimg", "duration_kimg and tick_kimg must be > 0")
        if self.resolution < 0 or (self.resolution and self.resolution % 16):
            raise bad("resolution", f"{self.resolution} is not a positive multiple of 16 (or 0 for the teacher's)")
        if self.text_dtype not in ("", "bf16", "fp32"):
            raise bad("text_dtype", "choose '', 'bf16' or 'fp32'")

    def per_rank(self, world: int) -> tuple[int, int]:
        """(per-rank batch, accumulation rounds) for ``world`` ranks, with an error naming the fix."""
        if self.batch % world:
            raise ValueError(f"config key 'batch': {self.batch} is not divisible by {world} ranks")
        b_rank = self.batch // world
        if b_rank % self.batch_gpu and self.batch_gpu < b_rank:
            raise ValueError(f"config key 'batch_gpu': the per-rank batch {b_rank} is not a multiple of "
                             f"batch_gpu {self.batch_gpu}")
        gpu = min(self.batch_gpu, b_rank)
        return b_rank, b_rank // gpu

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


# --- presets (spec §10) -----------------------------------------------------------------------------------
# Values that differ from the dataclass defaults, per teacher, with their source. The defaults above are the SANA
# run script's (code/script); everything not listed for a teacher keeps them.
# SD3/FLUX: the official loops precompute text embeddings and park encoders and VAE on the CPU (spec corrections
# 1 and 6); the SANA loop keeps Gemma on the GPU.
_SD3_LR = {"lr": (1e-6, "readme"), "glr": (1e-6, "readme"), "precompute_text": (True, "code"),
           "park_encoders": (True, "code")}
_UNCERTAIN_SAME = {k: "uncertain" for k in ("cfg_train_fake", "cfg_eval_fake", "cfg_eval_real", "alpha", "batch",
                                             "duration_kimg", "resolution")}

PRESETS: dict[str, dict[str, tuple[Any, str]]] = {
    "sana-0.6b": {"resolution": (512, "script"), "batch": (256, "script"), "batch_gpu": (8, "script"),
                  "text_dtype": ("bf16", "code")},
    "sana-1.6b": {"resolution": (512, "uncertain"), "text_dtype": ("bf16", "code")},
    "sana-sprint-0.6b-teacher": {"resolution": (1024, "uncertain"), "text_dtype": ("bf16", "code")},
    "sana-sprint-1.6b-teacher": {"resolution": (1024, "uncertain"), "text_dtype": ("bf16", "code")},
    "sd3-medium": {**_SD3_LR, "resolution": (1024, "uncertain"), "batch_gpu": (2, "uncertain")},
    "sd3.5-medium": {**_SD3_LR, "resolution": (1024, "uncertain"), "batch_gpu": (2, "uncertain")},
    "sd3.5-large": {**_SD3_LR, "resolution": (1024, "uncertain"), "batch_gpu": (1, "uncertain")},
    "flux-dev-512": {**_SD3_LR, "resolution": (512, "code"), "batch_gpu": (2, "uncertain")},
    "flux-dev-1024": {**_SD3_LR, "resolution": (1024, "code"), "batch_gpu": (1, "uncertain")},
}
# Tiny zoo teachers: a CPU-sized run that exercises every code path in seconds.
_TINY = {"resolution": (64, "tiny"), "batch": (4, "tiny"), "batch_gpu": (2, "tiny"), "duration_kimg": (0.016, "tiny"),
         "lr": (1e-4, "tiny"), "glr": (1e-4, "tiny"), "precision": ("fp32", "tiny"),
         "grad_checkpointing": (False, "tiny"), "tick_kimg": (0.004, "tiny"), "snapshot_ticks": (2, "tiny"),
         "checkpoint_ticks": (2, "tiny"), "freeze_kimg": (0.004, "tiny"), "mix_kimg": (0.008, "tiny")}
for _name in ("tiny-sana", "tiny-sana-sprint-teacher", "tiny-sd3", "tiny-sd35", "tiny-flux"):
    PRESETS[_name] = dict(_TINY)
# Pure-bf16 rules per teacher family, applied when a user picks precision=bf16 on a preset that is not bf16: key ->
# (value, source). lr = glr = 1e-5 is the README's pure-bf16 rate. Adam eps 1e-4 and value clipping of gradients at
# +-1 are the SD3 and FLUX loops' pure-bf16 rules; the SANA script changes eps only for fp16 (to 1e-6), so pure bf16
# keeps 1e-8, and the SANA loop never clips. (The official SANA loop itself runs only under AMP: its fake phase
# draws fp32 noise, which the bf16 mode breaks on.)
_BF16_README = {"lr": (1e-5, "readme (pure bf16)"), "glr": (1e-5, "readme (pure bf16)")}
_BF16_SD3_FLUX = {**_BF16_README, "adam_eps": (1e-4, "code (pure bf16, SD3/FLUX loops; readme)"),
                  "grad_clip": (1.0, "code (pure bf16, SD3/FLUX loops clip gradient values at +-1)")}
_BF16_RULES: dict[str, dict[str, tuple[Any, str]]] = {
    "sana": {**_BF16_README, "adam_eps": (1e-8, "script (pure bf16: the SANA script changes eps for fp16 only)"),
             "grad_clip": (0.0, "code (the SANA loop never clips gradients)")},
    "sd3": _BF16_SD3_FLUX,
    "flux": _BF16_SD3_FLUX,
}


def _sources(teacher: str) -> dict[str, str]:
    src = {f.name: "code" for f in fields(RunConfig)}
    for k in ("resolution", "batch", "batch_gpu", "lr", "glr", "duration_kimg", "cfg_train_fake", "cfg_eval_fake",
              "cfg_eval_real", "alpha", "weighting", "noise", "num_steps", "init_timestep", "grad_checkpointing",
              "precision"):
        src[k] = "script"
    if not teacher.startswith("sana-0.6b"):
        src.update(_UNCERTAIN_SAME)
    return src


def _parse(key: str, text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {key!r}: expected true/false, got {text!r}")
    try:
        return type(current)(text)
    except ValueError:
        raise ValueError(f"config key {key!r}: expected a {type(current).__name__}, got {text!r}") from None


def resolve_config(teacher: str, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, dict[str, str]]:
    """The run config for ``teacher``: dataclass defaults, then the teacher's preset, then ``overrides`` (values or
    strings to parse). Returns the config and each key's source. Unknown teachers and keys get errors that list
    the valid ones."""
    from ..teachers.registry import TEACHERS

    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; known teachers: {', '.join(TEACHERS)}")
    valid = {f.name for f in fields(RunConfig)} - {"teacher"}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    cfg = RunConfig(teacher=teacher)
    sources = _sources(teacher)
    for key, (value, src) in PRESETS.get(teacher, {}).items():
        cfg = replace(cfg, **{key: value})
        sources[key] = src
    if overrides.get("precision") == "bf16" and cfg.precision != "bf16":
        for key, (value, src) in _BF16_RULES[TEACHERS[teacher].family].items():
            if key not in overrides:
                cfg = replace(cfg, **{key: value})
                sources[key] = src
    for key, value in overrides.items():
        if isinstance(value, str) and not isinstance(getattr(cfg, key), str):
            value = _parse(key, value, getattr(cfg, key))
        cfg = replace(cfg, **{key: value})
        sources[key] = "user"
    if not cfg.resolution:
        cfg = replace(cfg, resolution=TEACHERS[teacher].resolution)
    return cfg, sources


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=1e-6", "batch=64"]`` -> ``{"lr": "1e-6", "batch": "64"}``, with an error for malformed items."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# Keys that may change between invocations of one run without changing what it computes: how long it runs, how
# often it writes, how it fits in memory, and where its inputs live on this machine (paths move between clusters).
RESUMABLE_KEYS = frozenset({"duration_kimg", "tick_kimg", "snapshot_ticks", "checkpoint_ticks", "keep_checkpoints",
                            "max_bad_iters", "batch_gpu", "grad_checkpointing", "precompute_text", "park_encoders",
                            "snapshot", "prompts", "forbidden_captions", "shards", "cache_dir", "init_from"})


def config_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every key outside ``RESUMABLE_KEYS`` that differs between a
    checkpoint's config and ``cfg`` (a key the checkpoint lacks counts as its default)."""
    defaults = {f.name: f.default for f in fields(RunConfig)}
    now = asdict(cfg)
    return {k: (saved.get(k, defaults.get(k)), v) for k, v in now.items()
            if k not in RESUMABLE_KEYS and saved.get(k, defaults.get(k)) != v}

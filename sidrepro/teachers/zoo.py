"""A zoo of tiny but real teachers: every family of the paper, in the Hugging Face hub layout, built offline.

Each entry is what ``DiffusionPipeline.save_pretrained`` writes for the real snapshot, with the real diffusers and
transformers classes and each family's conventions (schedulers and their shifts, VAE scaling/shift factors, time
scales, guidance embeddings, tokenizers and maximum text lengths), only with small configurations and random weights
drawn from a seed. So ``SanaPipeline.from_pretrained(folder)`` (and the SD3/FLUX/Sprint pipelines) load an entry
exactly as they load the real hub folder, and everything downstream can be tested on a CPU in seconds.

Entries (see :data:`ZOO`):

==============================  ================================================================================
``tiny-sana``                   ``Efficient-Large-Model/Sana_600M_512px_diffusers`` (``SanaPipeline``)
``tiny-sana-sprint-teacher``    ``Efficient-Large-Model/Sana_Sprint_0.6B_1024px_teacher_diffusers``
``tiny-sana-sprint``            ``Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers`` (``SanaSprintPipeline``)
``tiny-sd3``                    ``stabilityai/stable-diffusion-3-medium-diffusers``
``tiny-sd35``                   ``stabilityai/stable-diffusion-3.5-medium``
``tiny-flux``                   ``black-forest-labs/FLUX.1-dev``
``tiny-flux-schnell``           ``black-forest-labs/FLUX.1-schnell``
``tiny-flux-lora``              a diffusers-format LoRA for ``tiny-flux`` (``FluxPipeline.load_lora_weights``)
==============================  ================================================================================

Sizes: every VAE keeps its family's spatial compression mechanics with a compression of 8, so a 64x64 image is an
8x8 latent (SANA: 64 tokens of 32 channels; SD3: 16 tokens after 2x2 patches; FLUX: 16 packed tokens of 64
channels). Text lengths reach the real settings: Gemma-2 has RoPE with 8,192 positions (SANA: 300 tokens after its
long instruction prefix), CLIP 77 positions, T5 relative position buckets (77 for SD3, 512 for FLUX).

Determinism: weights come from ``torch.manual_seed`` of a seed derived from ``(seed, component)``; the tokenizers
depend on no seed. The same seed gives byte-identical files. Components that the real families share share weights
here too: the T5-XXL encoder (SD3, SD3.5, FLUX), the CLIP encoders and VAE of SD3/SD3.5, the CLIP-L and VAE of
FLUX.1-dev/-schnell, and the Gemma-2 and DC-AE of the SANA entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ZOO", "build_model", "build_zoo", "is_complete", "zoo_marker"]

log = logging.getLogger(__name__)

ZOO: dict[str, str] = {
    "tiny-sana": "SANA 600M-style rectified-flow teacher (SanaPipeline, DC-AE, Gemma-2, flow DPM-Solver, time x1000)",
    "tiny-sana-sprint-teacher": "SANA-Sprint teacher: SanaPipeline layout, transformer time in [0, 1] "
                                "(timestep_scale 0.001), no guidance embedding",
    "tiny-sana-sprint": "SANA-Sprint student baseline (SanaSprintPipeline, guidance embedding, SCM scheduler)",
    "tiny-sd3": "SD3-Medium-style teacher (2x CLIP + T5, 16-channel VAE with shift/scale, flow Euler shift 3)",
    "tiny-sd35": "SD3.5-Medium-style teacher: tiny-sd3 with qk RMSNorm and dual-attention (MMDiT-X) layers",
    "tiny-flux": "FLUX.1-dev-style teacher (guidance embedding, CLIP + T5 512 tokens, dynamic-shift flow Euler)",
    "tiny-flux-schnell": "FLUX.1-schnell-style model (no guidance embedding, shift 1, no dynamic shifting)",
    "tiny-flux-lora": "diffusers-format LoRA (pytorch_lora_weights.safetensors) for tiny-flux's transformer",
}

MARKER = "zoo.json"  # written last: its presence marks a complete entry
FORMAT_VERSION = 1  # bump when the layout or the configurations change, so that old entries are rebuilt

# --------------------------------------------------------------------------------------------------------------------
# Configurations. Each is the real model's configuration with sizes shrunk; the comments give the real values.

# SANA: Gemma-2-2B-it (hidden 2304, 26 layers, 8 heads / 4 kv heads of 256, vocab 256,000).
_GEMMA2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=8192,
               sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
               hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
               bos_token_id=2)
# SANA 600M: 28 layers, 36 heads x 32 (1152), cross-attention 16 x 72, caption channels 2304, sample_size 16 (512 px
# / 32). Tiny: sample_size is 64 px / 8.
_SANA = dict(in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=2,
             num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
             caption_channels=_GEMMA2["hidden_size"], mlp_ratio=2.5, attention_bias=False, sample_size=8,
             patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
             guidance_embeds=False, qk_norm=None, timestep_scale=1.0)
# SANA-Sprint (teacher and student) transformers carry RMSNorm on q/k across heads; the teacher reads flow time in
# [0, 1] (SanaPipeline multiplies the scheduler's 0..1000 timesteps by timestep_scale), the student has a guidance
# embedding (scaled by guidance_embeds_scale 0.1 in SanaSprintPipeline) and is driven in flow time by its pipeline.
_SANA_SPRINT_TEACHER = {**_SANA, "qk_norm": "rms_norm_across_heads", "timestep_scale": 0.001}
_SANA_SPRINT = {**_SANA, "qk_norm": "rms_norm_across_heads", "guidance_embeds": True, "guidance_embeds_scale": 0.1}
# DC-AE f32c32 (SANA 1.0): 6 stages (3 ResBlock + 3 EfficientViT stages with multi-scale 5x5 linear attention),
# channels 128..1024, conv downsampling, interpolation upsampling, RMSNorm + SiLU decoder. Tiny: 4 such stages (f8).
_DCAE = dict(in_channels=3, latent_channels=32, attention_head_dim=8,
             encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
             decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
             encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
             encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
             encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
             downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
             decoder_act_fns="silu", scaling_factor=0.41407)
# SANA's scheduler: flow DPM-Solver++ (2nd order) with flow shift 3.0 (what diffusers' conversion script writes for
# every SANA resolution below 4K); everything else at DPMSolverMultistepScheduler's defaults.
_SANA_SCHEDULER = dict(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
# SANA-Sprint's SCM scheduler (TrigFlow, sigma_data 0.5).
_SCM_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="trigflow", sigma_data=0.5)

# CLIP text towers (the real CLIP vocabulary and 77 positions). CLIP-L: hidden 768, 12 layers, quick_gelu;
# OpenCLIP bigG: hidden 1280, 32 layers, gelu; both with a projection of their width.
_CLIP_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32, bos_token_id=49406,
               eos_token_id=49407, pad_token_id=1)
_CLIP_G = {**_CLIP_L, "intermediate_size": 128, "hidden_act": "gelu"}
# T5 v1.1 XXL encoder (d_model 4096, 24 layers, 64 heads, gated-GELU, relative position buckets 32 / distance 128,
# which serve any text length).
_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
           relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
           is_gated_act=True, tie_word_embeddings=False, layer_norm_epsilon=1e-6, dropout_rate=0.1, pad_token_id=0,
           eos_token_id=1, decoder_start_token_id=0)
# SD3-Medium MMDiT: 24 layers of 24 heads x 64, caption projection = width, joint attention dim 4096 (T5 width),
# pooled projection 2048 (CLIP-L + bigG projections), pos_embed_max_size 192 for sample_size 128.
_SD3 = dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=32,
            num_attention_heads=2, caption_projection_dim=64, joint_attention_dim=_T5["d_model"],
            pooled_projection_dim=_CLIP_L["projection_dim"] + _CLIP_G["projection_dim"], pos_embed_max_size=32)
# SD3.5-Medium (MMDiT-X): qk RMSNorm and dual attention in the first layers (0..12 of 24).
_SD35 = {**_SD3, "qk_norm": "rms_norm", "dual_attention_layers": (0,)}
# The SD3 and FLUX KL-VAEs: 4 stages (f8) of 128..512 channels, 2 layers per block, 16 latent channels, no
# quant convs; they differ in scaling_factor / shift_factor.
_KL_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
               act_fn="silu", latent_channels=16, norm_num_groups=8, sample_size=64, force_upcast=True,
               use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
_SD3_VAE = {**_KL_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
_FLUX_VAE = {**_KL_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
_SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
# FLUX.1-dev: 19 double + 38 single blocks of 24 heads x 128, RoPE axes (16, 56, 56), joint attention dim 4096,
# pooled projection 768 (CLIP-L pooled output), guidance embedding.
_FLUX = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
             num_attention_heads=4, joint_attention_dim=_T5["d_model"], pooled_projection_dim=_CLIP_L["hidden_size"],
             guidance_embeds=True, axes_dims_rope=(4, 6, 6))
_FLUX_SCHNELL = {**_FLUX, "guidance_embeds": False}
# FLUX.1-dev's resolution-dependent shift (mu from 256 to 4096 image tokens, 0.5 -> 1.15); schnell: shift 1, static.
_FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                       max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
_FLUX_SCHNELL_SCHEDULER = {**_FLUX_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
# The LoRA: rank 4 on the attention projections of every double and single block, alpha = rank (scale 1).
_LORA_RANK = 4
_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_LORA_B_STD = 0.05  # peft initialises lora_B to zero (a no-op adapter); a real trained LoRA is not one


# --------------------------------------------------------------------------------------------------------------------
# Seeds and shared state


def _component_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one component, independent of the order in which components are built."""
    digest = hashlib.sha256(f"sidrepro-zoo/{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def _seeded(seed: int, key: str) -> Iterator[torch.Generator]:
    """Seed torch's CPU RNG for one component (model constructors draw from it), in float32, and restore the caller's
    RNG state and default dtype afterwards. Yields a second generator for explicit draws."""
    dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also reseed (and never restore) the caller's CUDA RNGs.
        torch.random.default_generator.manual_seed(_component_seed(seed, key))
        torch.set_default_dtype(torch.float32)  # the same bytes whatever default dtype the caller runs with
        try:
            yield torch.Generator().manual_seed(_component_seed(seed, key + "/extra"))
        finally:
            torch.set_default_dtype(dtype)


@dataclass
class _Cache:
    """Seed-independent objects shared by the entries of one build (the trained tokenizers)."""

    objects: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.objects:
            self.objects[key] = make()
        return self.objects[key]


def _t5_tokenizer(cache: _Cache) -> Any:
    from .tokenizers import t5_tokenizer

    return cache.get("t5", t5_tokenizer)


def _gemma_tokenizer(cache: _Cache) -> Any:
    from .tokenizers import gemma_tokenizer

    return cache.get("gemma", gemma_tokenizer)


def _clip_tokenizer(cache: _Cache, pad_token: str) -> Any:
    from .tokenizers import clip_tokenizer

    return cache.get(f"clip/{pad_token}", lambda: clip_tokenizer(pad_token))


# --------------------------------------------------------------------------------------------------------------------
# Components


def _gemma2(cache: _Cache, seed: int) -> tuple[Any, Any]:
    from transformers import Gemma2Config, Gemma2Model

    tok = _gemma_tokenizer(cache)
    with _seeded(seed, "sana/text_encoder"):
        enc = Gemma2Model(Gemma2Config(vocab_size=len(tok), **_GEMMA2))
    return tok, enc.eval()


def _dcae(seed: int) -> Any:
    from diffusers import AutoencoderDC

    with _seeded(seed, "sana/vae"):
        return AutoencoderDC(**_DCAE).eval()


def _clip(cache: _Cache, seed: int, key: str, config: dict[str, Any], *, projection: bool,
          pad_token: str) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = _clip_tokenizer(cache, pad_token)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with _seeded(seed, key):
        enc = cls(CLIPTextConfig(vocab_size=len(tok), **config))
    return tok, enc.eval()


def _t5(cache: _Cache, seed: int) -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel

    tok = _t5_tokenizer(cache)
    with _seeded(seed, "t5-v1_1-xxl"):  # SD3, SD3.5 and FLUX all use the same T5-XXL encoder
        enc = T5EncoderModel(T5Config(vocab_size=len(tok), **_T5))
    return tok, enc.eval()


def _kl_vae(seed: int, key: str, config: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    with _seeded(seed, key):
        return AutoencoderKL(**config).eval()


def _sana_pipeline(name: str, cache: _Cache, seed: int) -> Any:
    from diffusers import (
        DPMSolverMultistepScheduler,
        SanaPipeline,
        SanaSprintPipeline,
        SanaTransformer2DModel,
        SCMScheduler,
    )

    config = {"tiny-sana": _SANA, "tiny-sana-sprint-teacher": _SANA_SPRINT_TEACHER,
              "tiny-sana-sprint": _SANA_SPRINT}[name]
    tokenizer, text_encoder = _gemma2(cache, seed)
    with _seeded(seed, f"{name}/transformer"):
        transformer = SanaTransformer2DModel(**config).eval()
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=_dcae(seed), transformer=transformer)
    if name == "tiny-sana-sprint":
        return SanaSprintPipeline(**parts, scheduler=SCMScheduler(**_SCM_SCHEDULER))
    return SanaPipeline(**parts, scheduler=DPMSolverMultistepScheduler(**_SANA_SCHEDULER))


def _sd3_pipeline(name: str, cache: _Cache, seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    # SD3's first CLIP tokenizer pads with <|endoftext|>, the bigG one with "!" (id 0), as in the real snapshots.
    tokenizer, text_encoder = _clip(cache, seed, "sd3/text_encoder", _CLIP_L, projection=True,
                                    pad_token="<|endoftext|>")
    tokenizer_2, text_encoder_2 = _clip(cache, seed, "sd3/text_encoder_2", _CLIP_G, projection=True, pad_token="!")
    tokenizer_3, text_encoder_3 = _t5(cache, seed)
    with _seeded(seed, f"{name}/transformer"):
        transformer = SD3Transformer2DModel(**(_SD35 if name == "tiny-sd35" else _SD3)).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**_SD3_SCHEDULER),
        vae=_kl_vae(seed, "sd3/vae", _SD3_VAE), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _flux_transformer(name: str, seed: int) -> Any:
    from diffusers import FluxTransformer2DModel

    with _seeded(seed, f"{name}/transformer"):
        return FluxTransformer2DModel(**(_FLUX_SCHNELL if name == "tiny-flux-schnell" else _FLUX)).eval()


def _flux_pipeline(name: str, cache: _Cache, seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer, text_encoder = _clip(cache, seed, "flux/text_encoder", _CLIP_L, projection=False,
                                    pad_token="<|endoftext|>")
    tokenizer_2, text_encoder_2 = _t5(cache, seed)
    schnell = name == "tiny-flux-schnell"
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**(_FLUX_SCHNELL_SCHEDULER if schnell else _FLUX_SCHEDULER)),
        vae=_kl_vae(seed, "flux/vae", _FLUX_VAE), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=_flux_transformer(name, seed),
    )


def _flux_lora_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Random rank-4 LoRA weights for tiny-flux's transformer, in peft's key layout (no ``transformer.`` prefix)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # Only the module names and shapes matter here: the adapter is attached to a copy of the architecture, its own
    # weights are never saved.
    with torch.device("meta"):
        transformer = _flux_transformer("tiny-flux", seed)
    transformer.to_empty(device="cpu")
    transformer.add_adapter(LoraConfig(r=_LORA_RANK, lora_alpha=_LORA_RANK, target_modules=list(_LORA_TARGETS),
                                       init_lora_weights=True))
    state = get_peft_model_state_dict(transformer)
    with _seeded(seed, "tiny-flux-lora/weights") as gen:
        out = {}
        for key in sorted(state):
            w = state[key]
            fan_in = w.shape[1]
            std = (1.0 / fan_in) ** 0.5 if ".lora_A." in key else _LORA_B_STD
            out[key] = (torch.randn(w.shape, generator=gen, dtype=torch.float32) * std).contiguous()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Writing entries


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import safetensors
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "peft": peft.__version__}


def zoo_marker(name: str, seed: int) -> dict[str, Any]:
    """The content of an entry's ``zoo.json``: what was built, from which seed, with which package versions."""
    return {"name": name, "seed": seed, "format": FORMAT_VERSION, "description": ZOO[name], "versions": _versions()}


def is_complete(folder: Path, name: str, seed: int) -> bool:
    """Whether ``folder`` holds a finished build of ``name`` from ``seed`` (its ``zoo.json`` says so)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("name") == name and marker.get("seed") == seed and marker.get("format") == FORMAT_VERSION


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' per-file "Writing model shards" bars while saving (a dozen per zoo build)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_entry(name: str, folder: Path, seed: int, cache: _Cache) -> None:
    """Build ``name`` into the empty ``folder`` (not yet its final place)."""
    with _no_progress_bars():
        _write_files(name, folder, seed, cache)
    (folder / MARKER).write_text(json.dumps(zoo_marker(name, seed), indent=2, sort_keys=True) + "\n")


def _write_files(name: str, folder: Path, seed: int, cache: _Cache) -> None:
    if name == "tiny-flux-lora":
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=_flux_lora_state_dict(seed),
                                       safe_serialization=True)
    else:
        if name.startswith("tiny-sana"):
            pipe = _sana_pipeline(name, cache, seed)
        elif name.startswith("tiny-sd3"):
            pipe = _sd3_pipeline(name, cache, seed)
        else:
            pipe = _flux_pipeline(name, cache, seed)
        pipe.save_pretrained(folder, safe_serialization=True)
        _slim_clip_tokenizers(folder)


def _slim_clip_tokenizers(folder: Path) -> None:
    """Give CLIP tokenizer folders the real snapshots' ``vocab.json`` + ``merges.txt`` layout instead of the 3.6 MB
    ``tokenizer.json`` that transformers 5 writes (it rebuilds the same tokenizer from the two files)."""
    from .tokenizers import clip_vocab_and_merges

    index = json.loads((folder / "model_index.json").read_text())
    for component, spec in index.items():
        if isinstance(spec, list) and len(spec) == 2 and spec[1] == "CLIPTokenizer":
            sub = folder / component
            (sub / "tokenizer.json").unlink(missing_ok=True)
            vocab, merges = clip_vocab_and_merges()
            (sub / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            (sub / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _check_name(name: str) -> None:
    if name not in ZOO:
        raise ValueError(f"unknown zoo entry {name!r}; valid names: {', '.join(ZOO)}")


def _build(name: str, out: Path, seed: int, cache: _Cache, *, overwrite: bool) -> Path:
    """Build one entry atomically into ``out / name``: write a temporary sibling folder, then rename it."""
    _check_name(name)
    out = Path(out)
    target = out / name
    if not overwrite and is_complete(target, name, seed):
        return target
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_entry(name, tmp, seed, cache)
        if target.exists():
            if not overwrite and is_complete(target, name, seed):
                # Another process finished the same entry meanwhile: keep its copy.
                shutil.rmtree(tmp)
                return target
            # Move the old copy aside first: a non-empty directory cannot be replaced by a rename.
            old = out / f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built zoo entry %s (seed %d) at %s", name, seed, target)
    return target


def build_model(name: str, out: Path, *, seed: int = 0) -> Path:
    """Build the zoo entry ``name`` from ``seed`` into ``out / name`` and return that folder.

    ``out`` is the zoo's root folder (as in :func:`build_zoo`). The entry is always built afresh and replaces any
    existing copy atomically. Raises ``ValueError`` for an unknown name.
    """
    return _build(name, Path(out), seed, _Cache(), overwrite=True)


def build_zoo(out: Path, *, seed: int = 0, names: Iterable[str] | None = None,
              overwrite: bool = False) -> dict[str, Path]:
    """Build zoo entries (all of :data:`ZOO` by default) into ``out / <name>``; return ``{name: folder}``.

    An existing complete entry of the same name and seed is kept unless ``overwrite``; an incomplete one, or one
    built from another seed, is rebuilt. Each entry is written atomically (temporary sibling folder, then a
    rename), with its ``zoo.json`` marker last. Unknown names raise ``ValueError`` before anything is built.
    """
    if isinstance(names, str):  # a single name, not an iterable of its characters
        names = [names]
    selected = list(ZOO) if names is None else list(dict.fromkeys(names))
    for name in selected:
        _check_name(name)
    cache = _Cache()  # trained tokenizers are shared by all entries of this call
    return {name: _build(name, Path(out), seed, cache, overwrite=overwrite) for name in selected}

"""The tables' baselines (SANA-Sprint, Flash SD3, SD3.5 Turbo, FLUX.1-schnell, FLUX LoRAs), sampled through their
own diffusers pipelines with each one's recorded steps and guidance. LoRA baselines load the adapter on top of
the base model: diffusers-format LoRAs through ``load_lora_weights`` (fused at the recorded scale), PEFT adapters
(Flash SD3) through ``PeftModel`` on the transformer."""

from __future__ import annotations

from pathlib import Path

import torch

from .registry import BaselineEntry, get_baseline

_PIPELINES = {"sana_sprint": "SanaSprintPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


def load_baseline(entry: BaselineEntry | str, base: str | Path, lora: str | Path | None = None, *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The baseline's pipeline from the local snapshot ``base`` (and ``lora``, the adapter's snapshot folder)."""
    import diffusers

    entry = get_baseline(entry) if isinstance(entry, str) else entry
    if entry.lora_id and lora is None:
        raise ValueError(f"baseline {entry.name!r} needs its LoRA {entry.lora_id!r}: fetch it with "
                         f"`sidrepro fetch {entry.name}` and pass its folder")
    pipe = getattr(diffusers, _PIPELINES[entry.family]).from_pretrained(Path(base), dtype=dtype)
    if lora is not None:
        if entry.lora_format == "peft":
            from peft import PeftModel

            pipe.transformer = PeftModel.from_pretrained(pipe.transformer, str(lora)).merge_and_unload()
        else:
            kw = {"weight_name": entry.lora_weight_name} if entry.lora_weight_name else {}
            pipe.load_lora_weights(str(lora), **kw)
            pipe.fuse_lora(lora_scale=float(entry.extra.get("lora_scale", 1.0)))
            pipe.unload_lora_weights()  # fused: the weights keep the LoRA, the adapter layers go
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def sample_baseline(pipe, entry: BaselineEntry | str, prompts: list[str], *, generator: torch.Generator | None = None,
                    resolution: int | None = None, output_type: str = "pt") -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] (or latents with ``output_type="latent"``) at the recorded steps and
    guidance."""
    entry = get_baseline(entry) if isinstance(entry, str) else entry
    res = resolution or entry.resolution
    kw = dict(prompt=list(prompts), num_inference_steps=entry.steps, guidance_scale=entry.guidance, height=res,
              width=res, generator=generator, output_type=output_type)
    kw.update({k: v for k, v in entry.extra.items() if k != "lora_scale"})
    if entry.family == "sana_sprint":
        kw["use_resolution_binning"] = False  # sample the requested size, as every other row does
        if entry.steps != 2:  # the pipeline's default intermediate time is defined for 2 steps only
            kw["intermediate_timesteps"] = None
    return pipe(**kw).images

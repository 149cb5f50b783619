"""FLUX.1 (dev: guidance-distilled, guidance embedding; schnell: none): CLIP-L pooled vector and 512 T5 tokens,
2x2-packed latents with position ids, KL VAE with shift, FlowMatch-Euler with the resolution-dependent shift."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Conditioning, TeacherAdapter


class FluxAdapter(TeacherAdapter):
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"
    latent_multiple = 2

    @property
    def latent_channels(self) -> int:
        return int(self._transformer_config["in_channels"]) // 4

    @property
    def has_guidance_embed(self) -> bool:
        return bool(self._transformer_config.get("guidance_embeds"))

    def latent_shape(self, resolution: int | None = None) -> tuple[int, int, int]:
        c, h, w = super().latent_shape(resolution)
        return c, 2 * (h // 2), 2 * (w // 2)

    def _encode(self, prompts: list[str]) -> Conditioning:
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, prompt_2=None, device=self.device,
                                                    max_sequence_length=self.entry.max_sequence_length)
        return Conditioning(embeds, pooled=pooled)

    def _encode_empty(self) -> Conditioning:
        return self._encode([""])  # FLUX encodes the empty prompt like any other (spec §5.2)

    # FLUX's guidance convention (spec §5.3). "embed_and_cfg": the embedding equals the CFG scale and true CFG
    # runs when the scale is not 0 or 1 (the official code). "embed_only": the embedding alone, one pass.
    def guidance_embed(self, scale: float) -> float | None:
        return float(scale) if self.has_guidance_embed else None

    def cfg_scale(self, scale: float) -> float:
        if self.has_guidance_embed and self.entry.flux_guidance == "embed_only":
            return 1.0
        return scale

    def _call(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning,
              guidance_embed: float | None) -> Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        dtype = net.dtype
        packed = FluxPipeline._pack_latents(x.to(dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=dtype)
        guidance = None
        if guidance_embed is not None and self.has_guidance_embed:
            guidance = torch.full((b,), guidance_embed, device=x.device, dtype=torch.float32)
        # The time goes in as fp32; the transformer multiplies it by 1000 in its hidden states' dtype itself.
        out = net(hidden_states=packed, timestep=net_time, guidance=guidance,
                  pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
                  txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * self.vae_scale_factor, w * self.vae_scale_factor,
                                            self.vae_scale_factor)

    def _timesteps(self, scheduler, steps: int, noise: Tensor) -> Tensor:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = scheduler.config
        seq = (noise.shape[-2] // 2) * (noise.shape[-1] // 2)
        mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sigmas = None if c.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        if sigmas is None:
            scheduler.set_timesteps(steps, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        scheduler.set_begin_index(0)
        return scheduler.timesteps

    def _scheduler_time_to_net(self, timestep: Tensor) -> Tensor:
        return timestep / 1000  # FluxPipeline: ``timestep / 1000``; the transformer scales by 1000 inside

    def sampler_velocity(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning, guidance: float,
                         uncond: Conditioning | None) -> Tensor:
        # FluxPipeline's default: the guidance embedding at ``guidance``, one conditional pass, no true CFG.
        return self.forward(net, x, net_time, cond, guidance_embed=self.guidance_embed(guidance))[0]

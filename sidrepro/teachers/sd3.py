"""SD3-Medium, SD3.5-Medium and SD3.5-Large: two CLIP encoders (penultimate states, pooled projections) and T5 at
77 tokens (154 tokens in all, spec §5.2), KL VAE with shift, FlowMatch-Euler sampler with the snapshot's shift."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Conditioning, TeacherAdapter


class SD3Adapter(TeacherAdapter):
    pipeline_class = "StableDiffusion3Pipeline"
    transformer_class = "SD3Transformer2DModel"

    def _encode(self, prompts: list[str]) -> Conditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.entry.max_sequence_length)
        return Conditioning(embeds, pooled=pooled)

    def _encode_empty(self) -> Conditioning:
        # The same encoder on "" (SD3 has no instruction prefix), as StableDiffusion3Pipeline's negative prompt.
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            [""], prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.entry.max_sequence_length)
        return Conditioning(embeds, pooled=pooled)

    def _call(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning,
              guidance_embed: float | None) -> Tensor:
        dtype = net.dtype
        return net(hidden_states=x.to(dtype), timestep=net_time, encoder_hidden_states=cond.embeds.to(dtype),
                   pooled_projections=cond.pooled.to(dtype), return_dict=False)[0]

    def _timesteps(self, scheduler, steps: int, noise: Tensor) -> Tensor:
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            p = self._transformer_config["patch_size"]
            seq = (noise.shape[-2] // p) * (noise.shape[-1] // p)
            c = scheduler.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        scheduler.set_timesteps(steps, device=self.device, **kwargs)
        return scheduler.timesteps

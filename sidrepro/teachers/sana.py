"""SANA teachers (rectified flow at 512 px, time x1000; SANA-Sprint teachers at 1024 px, raw time): Gemma text
encoder with the complex-human instruction on non-empty prompts, 300 tokens plus mask, DC-AE VAE without shift."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from .base import Conditioning, TeacherAdapter


def default_instruction() -> list[str]:
    """SANA's complex-human instruction, as SanaPipeline's ``__call__`` defaults it (read, not copied)."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


class SanaAdapter(TeacherAdapter):
    pipeline_class = "SanaPipeline"
    transformer_class = "SanaTransformer2DModel"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instruction = default_instruction()

    def check_config(self, config: dict) -> None:
        if config.get("guidance_embeds"):
            raise ValueError(f"{self.entry.name}: transformer/config.json has guidance_embeds=true; SiD teachers "
                             "must be plain flow-matching SANA transformers (spec correction 4). Is this the "
                             "SANA-Sprint student instead of its teacher?")

    def _encode(self, prompts: list[str]) -> Conditioning:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.entry.max_sequence_length, complex_human_instruction=self.instruction)
        return Conditioning(embeds, mask)

    def _encode_empty(self) -> Conditioning:
        # Without the instruction, exactly as SanaPipeline encodes its negative prompt (spec §5.2).
        embeds, mask = self.pipe._get_gemma_prompt_embeds(
            [""], device=self.device, dtype=self.text_dtype, max_sequence_length=self.entry.max_sequence_length,
            complex_human_instruction=False)
        return Conditioning(embeds, mask)

    def _call(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning,
              guidance_embed: float | None) -> Tensor:
        dtype = net.dtype
        out = net(x.to(dtype), encoder_hidden_states=cond.embeds.to(dtype), encoder_attention_mask=cond.mask,
                  timestep=net_time, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned-sigma checkpoints: keep the velocity half
            out = out.chunk(2, dim=1)[0]
        return out

    def _timesteps(self, scheduler, steps: int, noise: Tensor) -> Tensor:
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler.timesteps


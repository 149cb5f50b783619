"""Transformer configurations of the real teachers, so that their architectures can be built with random weights
(benchmarks, memory models) where the weights themselves are not available. Values from the public
``transformer/config.json`` files of each hub repo; tokens and text lengths from spec §5 and §7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """A transformer class with its config and the shapes one sample feeds it at the teacher's resolution."""

    name: str
    transformer_class: str
    config: dict[str, Any]
    latent: tuple[int, int, int]  # (C, H, W) before any packing
    text_tokens: int
    text_dim: int
    pooled_dim: int = 0
    time_scale: float = 1000.0


_SANA_COMMON = dict(in_channels=32, out_channels=32, attention_head_dim=32, caption_channels=2304, mlp_ratio=2.5,
                    patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("sana-0.6b", "SanaTransformer2DModel",
                 dict(_SANA_COMMON, num_attention_heads=36, num_layers=28, num_cross_attention_heads=16,
                      cross_attention_head_dim=72, cross_attention_dim=1152, sample_size=16),
                 latent=(32, 16, 16), text_tokens=300, text_dim=2304),
    Architecture("sana-1.6b", "SanaTransformer2DModel",
                 dict(_SANA_COMMON, num_attention_heads=70, num_layers=20, num_cross_attention_heads=20,
                      cross_attention_head_dim=112, cross_attention_dim=2240, sample_size=16),
                 latent=(32, 16, 16), text_tokens=300, text_dim=2304),
    Architecture("sd3-medium", "SD3Transformer2DModel",
                 dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                      attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                      caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
                 latent=(16, 128, 128), text_tokens=154, text_dim=4096, pooled_dim=2048),
    Architecture("sd3.5-medium", "SD3Transformer2DModel",
                 dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                      attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                      caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                      qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
                 latent=(16, 128, 128), text_tokens=154, text_dim=4096, pooled_dim=2048),
    Architecture("sd3.5-large", "SD3Transformer2DModel",
                 dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                      attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                      caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                      qk_norm="rms_norm"),
                 latent=(16, 128, 128), text_tokens=154, text_dim=4096, pooled_dim=2048),
    Architecture("flux-dev-1024", "FluxTransformer2DModel",
                 dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                      guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
                 latent=(16, 128, 128), text_tokens=512, text_dim=4096, pooled_dim=768, time_scale=1.0),
]}

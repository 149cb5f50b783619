"""A memory model of one SiD-DiT training rank: which teacher fits on which GPUs, in which precision mode.

Per rank = sharded model states + the largest all-gathered block + activations of the worst phase + resident text
encoders and VAE + a fixed CUDA/allocator overhead. The model-state part is exact arithmetic (checked against the
tensors a real optimiser step allocates, ``tests/test_distill_memory.py``); the activation part is an estimate with
named constants, to be checked against a measured single-GPU peak (``bench/sid_iteration.py`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..teachers.architectures import ARCHITECTURES, Architecture

GB = 1e9
# Parameters (billions) of what stays unsharded on every rank.
TEXT_ENCODERS_B = {"sana": 2.61, "sd3": 0.12 + 0.69 + 4.76, "flux": 0.12 + 4.76}  # Gemma-2-2B; CLIP-L/G + T5-XXL
VAE_B = {"sana": 0.31, "sd3": 0.08, "flux": 0.08}
# Activation bytes per token and hidden unit stored inside one transformer block during its backward (QKV, attention
# output, 4x MLP, norms, residuals) and per token-unit kept at a checkpointed block boundary.
ACT_PER_BLOCK = 24
CUDA_OVERHEAD_GB = 3.0


@dataclass(frozen=True)
class MemoryEstimate:
    teacher: str
    precision: str
    gpus: int
    model_states_gb: float
    gathered_block_gb: float
    activations_gb: float
    encoders_gb: float
    total_gb: float

    def fits(self, gpu_gb: float) -> bool:
        return self.total_gb <= gpu_gb


def _family(arch: Architecture) -> str:
    return {"SanaTransformer2DModel": "sana", "SD3Transformer2DModel": "sd3"}.get(arch.transformer_class, "flux")


def _tokens(arch: Architecture, resolution: int) -> tuple[int, int]:
    """(image tokens, text tokens in the joint sequence) at ``resolution``."""
    _, h, w = arch.latent
    scale = resolution / (h * (8 if _family(arch) != "sana" else 32))
    h, w = int(h * scale), int(w * scale)
    patch = arch.config.get("patch_size", 1) if _family(arch) != "flux" else 2
    img = (h // patch) * (w // patch)
    return img, (0 if _family(arch) == "sana" else arch.text_tokens)  # SANA cross-attends: text is not in the stream


def model_state_bytes(params: int, precision: str) -> int:
    """Teacher + fake + generator, unsharded: weights, gradients of the two trained nets, Adam's two moments.
    AMP/fp32: everything fp32 (4 + 2 x (4 + 4 + 8) = 36 bytes/param); pure bf16: everything bf16 (2 + 2 x 8)."""
    per = 36 if precision in ("amp", "fp32") else 18
    return per * params


def estimate(teacher: str, *, precision: str = "amp", gpus: int = 8, batch_gpu: int = 1, resolution: int | None = None,
             grad_checkpointing: bool = True, text_encoders_on_gpu: bool = True) -> MemoryEstimate:
    """Peak memory of one rank for ``teacher`` (an ``ARCHITECTURES`` name) under FSDP on ``gpus`` GPUs."""
    arch = ARCHITECTURES[teacher]
    fam = _family(arch)
    cfg = arch.config
    hidden = cfg.get("num_attention_heads", 1) * cfg.get("attention_head_dim", 1)
    layers = cfg.get("num_layers", 0) + cfg.get("num_single_layers", 0)
    params = _params(arch)
    res = resolution or {"sana": 32 * arch.latent[1]}.get(fam, 8 * arch.latent[1])
    img, txt = _tokens(arch, res)
    act_bytes = 2 if precision in ("amp", "bf16") else 4  # bf16 matmul outputs under autocast
    states = model_state_bytes(params, precision) / gpus
    w_bytes = 2 if precision == "bf16" else 4
    block = 2 * params / max(layers, 1) * w_bytes  # the gathered block and the next one, prefetched
    tokens = img + txt

    def net_activations(batch: int) -> float:
        per_block = ACT_PER_BLOCK * batch * tokens * hidden * act_bytes
        if grad_checkpointing:  # block inputs kept (fp32 residual stream under AMP), one block recomputed
            return layers * batch * tokens * hidden * 4 + per_block
        return layers * per_block

    # Generator phase (the worst): generator with grad (b), teacher and fake under CFG (2b each), all backpropagated.
    acts = net_activations(batch_gpu) + 2 * net_activations(2 * batch_gpu)
    enc = (TEXT_ENCODERS_B[fam] * (4 if precision == "amp" and fam != "sana" else 2) + VAE_B[fam] * 4) * GB
    training = states + block + acts
    if fam == "sana" and text_encoders_on_gpu:  # SANA keeps Gemma and the DC-AE resident (spec correction 6)
        peak = training + enc
    else:  # SD3/FLUX park encoders and VAE on the CPU and bring them in only to encode
        peak = max(training, states + enc)
        enc = max(0.0, peak - training)  # what the encoders add to the training peak
    total = peak + CUDA_OVERHEAD_GB * GB
    return MemoryEstimate(teacher, precision, gpus, states / GB, block / GB, acts / GB, enc / GB, total / GB)


def _params(arch: Architecture) -> int:
    import diffusers
    import torch

    with torch.device("meta"):
        net = getattr(diffusers, arch.transformer_class)(**arch.config)
    return sum(p.numel() for p in net.parameters())


def table(gpus: int = 8, gpu_gb: float = 80.0) -> str:
    """Every real teacher in AMP and pure bf16 on ``gpus`` x ``gpu_gb`` GB, batch 1 per GPU, checkpointing on."""
    lines = [f"{'teacher':14} {'mode':5} {'states':>7} {'block':>6} {'acts':>6} {'enc':>6} {'total':>7}  fits "
             f"{gpus}x{gpu_gb:g} GB"]
    for name, res in [(n, None) for n in ARCHITECTURES] + [("flux-dev-1024", 512)]:
        for mode in ("amp", "bf16"):
            e = estimate(name, precision=mode, gpus=gpus, resolution=res)
            label = "flux-dev-512" if res == 512 else name
            lines.append(f"{label:14} {mode:5} {e.model_states_gb:>7.1f} {e.gathered_block_gb:>6.1f} "
                         f"{e.activations_gb:>6.1f} {e.encoders_gb:>6.1f} {e.total_gb:>7.1f}  "
                         f"{'yes' if e.fits(gpu_gb) else 'NO'}")
    return "\n".join(lines)

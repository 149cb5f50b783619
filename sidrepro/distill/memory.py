"""A memory model of one SiD-DiT training rank: which teacher fits on which GPUs, in which precision mode.

Per rank = weights of the three networks and Adam's moments of the two trained ones (sharded under FSDP) + the
worst phase + the largest all-gathered blocks + resident text encoders and VAE + a fixed CUDA/allocator overhead.
The two phases peak differently (the trainer frees each network's gradients after its step):

- fake phase, end of the fake network's backward: its gradients, complete, plus the activations still alive then
  (the recomputed block's internals, 2B samples under CFG);
- generator phase, start of the backward: the checkpointed block inputs of the generator (B samples), the teacher and
  the fake network (2B each) plus one recomputed block; the generator's gradients appear as these are freed.

Model states are exact arithmetic (checked against the tensors a real optimiser step allocates,
``tests/test_distill_memory.py``). The activation constants are fitted to single-GPU peaks measured with
``bench/sid_iteration.py --real-size`` (H200, random-weight SANA-1.6B and SD3-Medium, AMP and pure bf16; the figures
are in ``bench/results/sid_iteration_h200.jsonl`` and the test checks the model against them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..teachers.architectures import ARCHITECTURES, Architecture

GB = 1e9
# Parameters (billions) of what stays unsharded on every rank.
TEXT_ENCODERS_B = {"sana": 2.61, "sd3": 0.12 + 0.69 + 4.76, "flux": 0.12 + 4.76}  # Gemma-2-2B; CLIP-L/G + T5-XXL
VAE_B = {"sana": 0.31, "sd3": 0.08, "flux": 0.08}
# Bytes per (sample x token x hidden unit) alive inside one recomputed block during its backward, fitted to the
# measured peaks: SANA's blocks hold far more per unit (GLUMBConv's 5x expanded depthwise-conv stream, linear
# attention in fp32) than an MMDiT block. FLUX (MMDiT blocks, not measured) takes SD3's value.
ACT_PER_BLOCK = {"sana": 100, "sd3": 16, "flux": 16}
CUDA_OVERHEAD_GB = 3.0  # CUDA context + the caching allocator's reserve (measured reserve: 1.0-2.2 GB)


@dataclass(frozen=True)
class MemoryEstimate:
    teacher: str
    precision: str
    gpus: int
    model_states_gb: float  # weights (3 networks) + Adam moments (2), this rank's share
    gradients_gb: float  # one trained network's gradients, this rank's share
    gathered_block_gb: float
    activations_gb: float  # of the phase that peaks
    encoders_gb: float
    total_gb: float
    peak_phase: str = ""

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
             grad_checkpointing: bool = True, text_encoders_on_gpu: bool = True, params: int | None = None,
             encoder_gb: float | None = None) -> MemoryEstimate:
    """Peak memory of one rank for ``teacher`` (an ``ARCHITECTURES`` name) under FSDP on ``gpus`` GPUs.

    ``params`` and ``encoder_gb`` replace the architecture's transformer size and the resident text encoders + VAE,
    for checking the model against a measured run with other encoders (``bench/sid_iteration.py --real-size``)."""
    arch = ARCHITECTURES[teacher]
    fam = _family(arch)
    cfg = arch.config
    hidden = cfg.get("num_attention_heads", 1) * cfg.get("attention_head_dim", 1)
    layers = cfg.get("num_layers", 0) + cfg.get("num_single_layers", 0)
    params = params or _params(arch)
    res = resolution or {"sana": 32 * arch.latent[1]}.get(fam, 8 * arch.latent[1])
    img, txt = _tokens(arch, res)
    w_bytes = 2 if precision == "bf16" else 4
    states = 7 * w_bytes * params / gpus  # 3 weights + 2 x 2 moments, each the weights' dtype
    grads = w_bytes * params / gpus
    # The gathered block and the next one, prefetched; one GPU holds its weights whole and gathers nothing.
    block = 2 * params / max(layers, 1) * w_bytes if gpus > 1 else 0.0
    unit = (img + txt) * hidden  # one sample's token x hidden units
    boundary = 4 if precision != "bf16" else 2  # the residual stream: fp32 under AMP (fp32 norms promote it)
    inside = ACT_PER_BLOCK[fam] * unit * (2 if precision != "fp32" else 4)

    def kept(samples: int) -> float:  # one network's activations held for its backward
        if grad_checkpointing:
            return layers * samples * unit * boundary
        return layers * samples * inside

    b = batch_gpu
    recompute = 2 * b * inside if grad_checkpointing else 0.0
    fake_peak = grads + recompute
    gen_peak = kept(b) + kept(2 * b) + kept(2 * b) + recompute
    phase, acts = ("generator", gen_peak) if gen_peak > fake_peak else ("fake", fake_peak - grads)
    training = states + block + max(fake_peak, gen_peak)
    if encoder_gb is not None:
        enc = encoder_gb * GB
        peak = training + enc
    elif fam == "sana" and text_encoders_on_gpu:  # SANA keeps Gemma and the DC-AE resident (spec correction 6)
        enc = (TEXT_ENCODERS_B[fam] * 2 + VAE_B[fam] * 4) * GB
        peak = training + enc
    else:  # SD3/FLUX park encoders and VAE on the CPU and bring them in only to encode
        enc = (TEXT_ENCODERS_B[fam] * (4 if precision == "amp" else 2) + VAE_B[fam] * 4) * GB
        peak = max(training, states + enc)
        enc = max(0.0, peak - training)  # what the encoders add to the training peak
    total = peak + CUDA_OVERHEAD_GB * GB
    return MemoryEstimate(teacher, precision, gpus, states / GB, grads / GB, block / GB, acts / GB, enc / GB,
                          total / GB, phase)


def _params(arch: Architecture) -> int:
    import diffusers
    import torch

    with torch.device("meta"):
        net = getattr(diffusers, arch.transformer_class)(**arch.config)
    return sum(p.numel() for p in net.parameters())


def table(gpus: int = 8, gpu_gb: float = 80.0) -> str:
    """Every real teacher in AMP and pure bf16 on ``gpus`` x ``gpu_gb`` GB, batch 1 per GPU, checkpointing on."""
    lines = [f"{'teacher':14} {'mode':5} {'states':>7} {'grads':>6} {'block':>6} {'acts':>6} {'enc':>6} {'total':>7}  "
             f"{'peak in':9} fits {gpus}x{gpu_gb:g} GB"]
    for name, res in [(n, None) for n in ARCHITECTURES] + [("flux-dev-1024", 512)]:
        for mode in ("amp", "bf16"):
            e = estimate(name, precision=mode, gpus=gpus, resolution=res)
            label = "flux-dev-512" if res == 512 else name
            grads = e.gradients_gb if e.peak_phase == "fake" else 0.0
            lines.append(f"{label:14} {mode:5} {e.model_states_gb:>7.1f} {grads:>6.1f} {e.gathered_block_gb:>6.1f} "
                         f"{e.activations_gb:>6.1f} {e.encoders_gb:>6.1f} {e.total_gb:>7.1f}  {e.peak_phase:9} "
                         f"{'yes' if e.fits(gpu_gb) else 'NO'}")
    return "\n".join(lines)

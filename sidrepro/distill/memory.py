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

Start-up (:func:`load_estimate`): under FSDP each rank allocates only its shards of the three networks and reads
their rows from the snapshot (``sidrepro/distill/sharded_load.py``), so its start-up peak is those shards (FSDP pads
every tensor to ``ceil(rows / gpus)`` rows), the buffers every rank holds whole (SD3's position-embedding table,
per network), one tensor's shard in flight, and the text encoders while they encode right after loading. The
former trainer loaded three full copies per GPU before sharding (``before``). Export (:func:`export_host_bytes`)
streams the student a group of tensors at a time (``sidrepro/distill/stream_export.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from ..teachers.architectures import ARCHITECTURES, Architecture

GB = 1e9
# Parameters (billions) of what stays unsharded on every rank.
TEXT_ENCODERS_B = {"sana": 2.61, "sd3": 0.12 + 0.69 + 4.76, "flux": 0.12 + 4.76}  # Gemma-2-2B; CLIP-L/G + T5-XXL
VAE_B = {"sana": 0.31, "sd3": 0.08, "flux": 0.08}
# Bytes per (sample x token x hidden unit) alive inside one recomputed block during its backward, fitted to the
# measured peaks: SANA's blocks hold far more per unit (GLUMBConv's 5x expanded depthwise-conv stream, linear
# attention in fp32) than an MMDiT block. FLUX (MMDiT blocks, not measured) takes SD3's value.
ACT_PER_BLOCK = {"sana": 100, "sd3": 16, "flux": 16}
# Bytes per element of SD3's sincos position table while diffusers' __init__ computes it (host memory): the float64
# embeddings of height and width (half the table's columns each: 4 + 4 bytes per table element) and their float64
# concatenation (8) are alive together before the cast to fp32.
SINCOS_INIT_BYTES = 16
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
    buffers_gb: float = 0.0  # the three networks' buffers, whole on every rank (FSDP shards parameters only)

    def fits(self, gpu_gb: float) -> bool:
        return self.total_gb <= gpu_gb


@dataclass(frozen=True)
class NetSizes:
    """Exact element counts of one transformer (built on the meta device)."""

    params: int
    buffers: int
    largest: int  # elements of the largest parameter
    largest_block: int  # parameters of the largest transformer block
    rows: tuple[tuple[int, int], ...]  # (rows of dimension 0, elements) of every parameter

    def shard(self, gpus: int) -> int:
        """Elements of the largest rank's shard: FSDP2 gives each rank ``ceil(rows / gpus)`` rows of every
        parameter (rank 0 never holds fewer than another)."""
        return sum(math.ceil(r / gpus) * (n // r) for r, n in self.rows if r)


@dataclass(frozen=True)
class LoadEstimate:
    """One rank's GPU memory at start-up: the three networks built, sharded and loaded, then the first encoding."""

    teacher: str
    precision: str
    gpus: int
    networks_gb: float  # this rank's parameter shards of the three networks + their buffers, whole
    transit_gb: float  # the largest tensor shard in flight while loading
    encoders_gb: float  # text encoders and VAE on the GPU at the start-up peak
    total_gb: float
    before_gb: float  # the former start-up: three full copies (and the encoders) on every GPU, then sharding

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
             encoder_gb: float | None = None, buffers: int | None = None) -> MemoryEstimate:
    """Peak memory of one rank for ``teacher`` (an ``ARCHITECTURES`` name) under FSDP on ``gpus`` GPUs.

    ``params`` and ``encoder_gb`` replace the architecture's transformer size and the resident text encoders + VAE,
    for checking the model against a measured run with other encoders (``bench/sid_iteration.py --real-size``).
    ``buffers`` (elements per network, whole on every rank) defaults to the architecture's, or to 0 with ``params``
    (a count read from a snapshot's safetensors already holds its persistent buffers)."""
    arch = ARCHITECTURES[teacher]
    fam = _family(arch)
    cfg = arch.config
    hidden = cfg.get("num_attention_heads", 1) * cfg.get("attention_head_dim", 1)
    layers = cfg.get("num_layers", 0) + cfg.get("num_single_layers", 0)
    if buffers is None:
        buffers = 0 if params else arch_sizes(teacher).buffers
    params = params or _params(arch)
    res = resolution or {"sana": 32 * arch.latent[1]}.get(fam, 8 * arch.latent[1])
    img, txt = _tokens(arch, res)
    w_bytes = 2 if precision == "bf16" else 4
    states = 7 * w_bytes * params / gpus  # 3 weights + 2 x 2 moments, each the weights' dtype
    replicated = 3 * w_bytes * buffers
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
    training = states + replicated + block + max(fake_peak, gen_peak)
    if encoder_gb is not None:
        enc = encoder_gb * GB
        peak = training + enc
    elif fam == "sana" and text_encoders_on_gpu:  # SANA keeps Gemma and the DC-AE resident (spec correction 6)
        enc = (TEXT_ENCODERS_B[fam] * 2 + VAE_B[fam] * 4) * GB
        peak = training + enc
    else:  # SD3/FLUX park encoders and VAE on the CPU and bring them in only to encode
        enc = (TEXT_ENCODERS_B[fam] * (4 if precision == "amp" else 2) + VAE_B[fam] * 4) * GB
        peak = max(training, states + replicated + enc)
        enc = max(0.0, peak - training)  # what the encoders add to the training peak
    total = peak + CUDA_OVERHEAD_GB * GB
    return MemoryEstimate(teacher, precision, gpus, states / GB, grads / GB, block / GB, acts / GB, enc / GB,
                          total / GB, phase, replicated / GB)


def _params(arch: Architecture) -> int:
    return arch_sizes(arch.name).params


def net_sizes(transformer_class: str, config: dict) -> NetSizes:
    """The exact sizes of a diffusers transformer class with ``config``, built on the meta device."""
    import diffusers
    import torch

    with torch.device("meta"):
        net = getattr(diffusers, transformer_class).from_config(config)
    params = list(net.parameters())
    blocks = [sum(p.numel() for p in b.parameters()) for attr in ("transformer_blocks", "single_transformer_blocks")
              for b in getattr(net, attr, [])]
    return NetSizes(params=sum(p.numel() for p in params), buffers=sum(b.numel() for b in net.buffers()),
                    largest=max(p.numel() for p in params), largest_block=max(blocks, default=0),
                    rows=tuple((p.shape[0] if p.dim() else 1, p.numel()) for p in params))


@cache
def arch_sizes(teacher: str) -> NetSizes:
    """:func:`net_sizes` of a real teacher's architecture (``ARCHITECTURES``)."""
    arch = ARCHITECTURES[teacher]
    return net_sizes(arch.transformer_class, arch.config)


def _encoder_bytes(fam: str, precision: str, resident: bool) -> float:
    """Text encoders and VAE on the GPU: SANA keeps Gemma (bf16) and the DC-AE resident; parked encoders visit in
    the text dtype (fp32 under AMP)."""
    if resident:
        return (TEXT_ENCODERS_B[fam] * 2 + VAE_B[fam] * 4) * GB
    return (TEXT_ENCODERS_B[fam] * (4 if precision == "amp" else 2) + VAE_B[fam] * 4) * GB


def load_estimate(teacher: str, *, precision: str = "amp", gpus: int = 8, text_encoders_on_gpu: bool = True,
                  sizes: NetSizes | None = None, encoder_gb: float | None = None,
                  overhead_gb: float = CUDA_OVERHEAD_GB, cpu: bool = False) -> LoadEstimate:
    """One rank's start-up peak for ``teacher`` on ``gpus`` GPUs. Under FSDP: its parameter shards of the three
    networks + their buffers + one tensor's shard in flight (FSDP's padded copy as it materialises a parameter) +
    the encoders (SANA: resident throughout; SD3/FLUX: parked while the networks load, then encoding the prompt
    cache beside the loaded shards). On one GPU the networks load whole (no sharding to do).

    ``sizes`` replaces the architecture (a narrowed model), ``encoder_gb`` the encoders (resident), ``overhead_gb``
    the CUDA context and allocator reserve (0 for a CPU run, whose process baseline the caller adds). ``cpu``: the
    networks live in host memory, where each one's ``__init__`` also computes its buffers (SD3's position table:
    ``SINCOS_INIT_BYTES`` per element at the peak) while the networks built before it are loaded."""
    fam = _family(ARCHITECTURES[teacher])
    s = sizes or arch_sizes(teacher)
    w = 2 if precision == "bf16" else 4
    resident = fam == "sana" and text_encoders_on_gpu
    enc = encoder_gb * GB if encoder_gb is not None else _encoder_bytes(fam, precision, resident)
    if gpus > 1:
        nets = 3 * w * (s.shard(gpus) + s.buffers)
        transit = w * math.ceil(s.largest / gpus)
    else:
        nets, transit = 3 * w * (s.params + s.buffers), 0
    if encoder_gb is not None or resident:
        peak = nets + transit + enc
    else:
        peak, enc = nets + max(transit, enc), max(0.0, enc - transit)
    init = SINCOS_INIT_BYTES * s.buffers if cpu else 0
    if cpu and 2 * nets / 3 + init > nets + transit:  # the third network's __init__ peaks above the loaded three
        transit = init - nets / 3
        peak = 2 * nets / 3 + init + (enc if encoder_gb is not None or resident else 0)
    # The former trainer: three full copies beside the encoders, which it parked only after the first encoding.
    before = 3 * w * (s.params + s.buffers) + _encoder_bytes(fam, precision, fam == "sana") + overhead_gb * GB
    return LoadEstimate(teacher, precision, gpus, nets / GB, transit / GB, enc / GB, (peak + overhead_gb * GB) / GB,
                        before / GB)


def export_host_bytes(teacher: str, *, precision: str = "amp", group_bytes: int = 1 << 28,
                      sizes: NetSizes | None = None) -> tuple[float, float]:
    """Host memory of exporting a student, ``(streamed, before)`` in bytes, the interpreter not counted: a group
    of tensors plus DCP's two in-flight copies of one saved chunk (at most the largest tensor), in the saved dtype;
    before, the whole generator twice in fp32 (the checkpoint's weights and the model they were loaded into)."""
    s = sizes or arch_sizes(teacher)
    w = 2 if precision == "bf16" else 4
    return group_bytes + 2 * w * s.largest, 2 * 4 * (s.params + s.buffers)


_ROWS = [(n, None, n) for n in ARCHITECTURES] + [("flux-dev-1024", 512, "flux-dev-512")]


def table(gpus: int = 8, gpu_gb: float = 80.0) -> str:
    """Every real teacher in AMP and pure bf16 on ``gpus`` x ``gpu_gb`` GB, batch 1 per GPU, checkpointing on:
    start-up and training peaks per GPU (GB) and the export's host memory."""
    lines = [f"{'teacher':14} {'mode':5} {'states':>7} {'grads':>6} {'block':>6} {'acts':>6} {'enc':>6} {'train':>7} "
             f"{'peak in':9} {'start':>6} {'was':>6} {'export':>7} {'was':>6}  fits {gpus}x{gpu_gb:g} GB"]
    for name, res, label in _ROWS:
        for mode in ("amp", "bf16"):
            e = estimate(name, precision=mode, gpus=gpus, resolution=res)
            ld = load_estimate(name, precision=mode, gpus=gpus)
            exp, exp_before = export_host_bytes(name, precision=mode)
            grads = e.gradients_gb if e.peak_phase == "fake" else 0.0
            ok = e.fits(gpu_gb) and ld.fits(gpu_gb)
            lines.append(f"{label:14} {mode:5} {e.model_states_gb + e.buffers_gb:>7.1f} {grads:>6.1f} "
                         f"{e.gathered_block_gb:>6.1f} {e.activations_gb:>6.1f} {e.encoders_gb:>6.1f} "
                         f"{e.total_gb:>7.1f}  {e.peak_phase:9} {ld.total_gb:>6.1f} {ld.before_gb:>6.1f} "
                         f"{exp / GB:>7.1f} {exp_before / GB:>6.1f}  {'yes' if ok else 'NO'}")
    return "\n".join(lines)


def gpu_count_table(counts: tuple[int, ...] = (1, 2, 4, 8, 16), gpu_gb: float = 80.0, precision: str = "amp") -> str:
    """Start-up / training peak per GPU (GB) of every real teacher over ``counts`` GPUs of ``gpu_gb`` GB; a ``*``
    marks a peak that does not fit, and the last column is the fewest GPUs (of ``counts``) on which both fit."""
    head = "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>14}" for n in counts)
    lines = [f"{'teacher':14} {'mode':5}{head}  fewest"]
    for name, res, label in _ROWS:
        cells, fewest = [], "-"
        for n in counts:
            start = load_estimate(name, precision=precision, gpus=n).total_gb
            train = estimate(name, precision=precision, gpus=n, resolution=res).total_gb
            cells.append(f"{start:>6.0f}{'*' if start > gpu_gb else ' '}/{train:>4.0f}{'*' if train > gpu_gb else ' '}")
            if fewest == "-" and max(start, train) <= gpu_gb:
                fewest = str(n)
        lines.append(f"{label:14} {precision:5}{''.join(f'{c:>14}' for c in cells)}  {fewest:>6}")
    return "\n".join(lines)

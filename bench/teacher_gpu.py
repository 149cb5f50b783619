"""Time the real-size teacher transformers with random weights on one GPU: forward, forward + backward to the
weights (the fake network's step) and backward to the input only (the teacher inside the generator loss), in
bf16, at the teachers' resolutions. Prints milliseconds per sample batch and peak memory.

    .venv/bin/python bench/teacher_gpu.py --models sana-1.6b sd3-medium --batch 1

Needs a CUDA GPU; weights are random, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys

import torch

from sidrepro.teachers.architectures import ARCHITECTURES, Architecture


def _inputs(arch: Architecture, batch: int, device: str, dtype: torch.dtype) -> dict:
    c, h, w = arch.latent
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    t = torch.full((batch,), 0.5 * arch.time_scale, device=device, dtype=dtype)
    text = torch.randn(batch, arch.text_tokens, arch.text_dim, device=device, dtype=dtype)
    if arch.transformer_class == "SanaTransformer2DModel":
        mask = torch.ones(batch, arch.text_tokens, device=device, dtype=torch.long)
        return dict(hidden_states=x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t)
    pooled = torch.randn(batch, arch.pooled_dim, device=device, dtype=dtype)
    if arch.transformer_class == "SD3Transformer2DModel":
        return dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t)
    from diffusers import FluxPipeline

    packed = FluxPipeline._pack_latents(x, batch, c, h, w)
    return dict(hidden_states=packed, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                guidance=torch.full((batch,), 3.5, device=device, dtype=torch.float32),
                txt_ids=torch.zeros(arch.text_tokens, 3, device=device, dtype=dtype),
                img_ids=FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, device, dtype))


def _time(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def bench(name: str, batch: int, repeats: int, checkpointing: bool) -> dict:
    import diffusers

    arch = ARCHITECTURES[name]
    dtype, device = torch.bfloat16, "cuda"
    with torch.device(device):
        net = getattr(diffusers, arch.transformer_class)(**arch.config).to(dtype)
    if checkpointing:
        net.enable_gradient_checkpointing()
    params = sum(p.numel() for p in net.parameters()) / 1e9
    kw = _inputs(arch, batch, device, dtype)

    def forward():
        with torch.no_grad():
            net(**kw, return_dict=False)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        net(**kw, return_dict=False)[0].float().square().mean().backward()

    def backward_to_input():
        x = kw["hidden_states"].detach().requires_grad_(True)
        out = net(**{**kw, "hidden_states": x}, return_dict=False)[0]
        (g,) = torch.autograd.grad(out.float().square().mean(), x)
        return g

    torch.cuda.reset_peak_memory_stats()
    row = {"model": name, "params_B": round(params, 2), "batch": batch,
           "forward_ms": _time(forward, repeats)}
    net.requires_grad_(True)
    row["fwd_bwd_ms"] = _time(forward_backward, repeats)
    net.zero_grad(set_to_none=True)
    net.requires_grad_(False)
    row["bwd_to_input_ms"] = _time(backward_to_input, repeats)
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row  # the network goes with this frame; main() empties the cache


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=sorted(ARCHITECTURES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: run this on a GPU node", file=sys.stderr)
        return 1
    print(f"{torch.cuda.get_device_name()}, bf16, batch {args.batch}, checkpointing {args.checkpointing}")
    print(f"{'model':14} {'params':>7} {'fwd ms':>8} {'fwd+bwd ms':>11} {'bwd->x ms':>10} {'peak GiB':>9}")
    for name in args.models:
        try:
            r = bench(name, args.batch, args.repeats, args.checkpointing)
        except torch.cuda.OutOfMemoryError:
            print(f"{name:14} out of memory")
            torch.cuda.empty_cache()
            continue
        torch.cuda.empty_cache()
        print(f"{r['model']:14} {r['params_B']:>6}B {r['forward_ms']:>8.1f} {r['fwd_bwd_ms']:>11.1f} "
              f"{r['bwd_to_input_ms']:>10.1f} {r['peak_gib']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation throughput at real size on one GPU: 4-step student sampling (the real-size transformer with random
weights, bf16, the SiD sampler's network passes) and TF-Inception feature extraction of 256 px images through
clean-fid's code. Prints images per second. Decoding is not included (the VAE is not part of the student).

    .venv/bin/python bench/evaluate_gpu.py --models sana-1.6b sd3-medium flux-dev-1024 --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sidrepro.sid.sampler import generate
from sidrepro.teachers.architectures import ARCHITECTURES


def sampling_rate(name: str, batch: int, repeats: int) -> float:
    import diffusers

    sys.path.insert(0, "bench")
    from teacher_gpu import _inputs  # the same real-size inputs as the teacher benchmark

    arch = ARCHITECTURES[name]
    with torch.device("cuda"):
        net = getattr(diffusers, arch.transformer_class)(**arch.config).to(torch.bfloat16).eval()
    kw = _inputs(arch, batch, "cuda", torch.bfloat16)
    x_in = kw.pop("hidden_states")

    def velocity(x, t):
        return net(hidden_states=x, **{**kw, "timestep": t.to(torch.bfloat16) * arch.time_scale},
                   return_dict=False)[0]

    z = torch.randn_like(x_in)

    @torch.no_grad()
    def run():
        return generate(velocity, z, 4, num_steps=4, noise="fresh")

    run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def inception_rate(n: int, batch: int) -> float:
    from sidrepro.evaluate.fid import inception_feature_fn

    fn = inception_feature_fn("legacy_tensorflow", "cuda")
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8)
    fn(images)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n // batch):
        fn(images)
    torch.cuda.synchronize()
    return (n // batch) * batch / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["sana-1.6b", "sd3-medium", "flux-dev-1024"],
                   choices=sorted(ARCHITECTURES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inception-images", type=int, default=512)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: run this on a GPU node", file=sys.stderr)
        return 1
    print(f"{torch.cuda.get_device_name()}, bf16, batch {args.batch}")
    for name in args.models:
        rate = sampling_rate(name, args.batch, args.repeats)
        print(f"{name:14} 4-step sampling (transformer only): {rate:.2f} img/s", flush=True)
        torch.cuda.empty_cache()
    print(f"TF-Inception features (256 px, legacy_tensorflow): {inception_rate(args.inception_images, 64):.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

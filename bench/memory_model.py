"""Per-GPU peak memory of SiD-DiT for every real teacher under FSDP, from the memory model in
``sidrepro/distill/memory.py`` (model states exact, activations estimated): the start-up peak (sharded loading,
beside the former three-full-copies start-up), the training peak, the export's host memory, and over how many GPUs
each teacher starts and trains.

    .venv/bin/python bench/memory_model.py --gpus 8 --gpu-gb 80
"""

from __future__ import annotations

import argparse
import sys

from sidrepro.distill.memory import estimate, gpu_count_table, load_estimate, table

LEGEND = """GB = 1e9 bytes; batch 1 per GPU, gradient checkpointing on; SD3/FLUX park their encoders on the CPU.
states: weights of the 3 networks + Adam's moments of 2 (this GPU's shard) + buffers every GPU holds whole;
train: the training peak (in the phase named); start: the start-up peak with sharded loading (was: three full
copies per GPU, the former start-up); export: the host memory of writing the student (was: two fp32 copies)."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--counts", default="1,2,4,8,16", help="GPU counts of the second table")
    args = p.parse_args()
    counts = tuple(int(n) for n in args.counts.split(","))
    print(LEGEND)
    print(table(args.gpus, args.gpu_gb))
    for mode in ("amp", "bf16"):
        print(f"\nstart-up / training peak per GPU (GB), {mode}; * does not fit {args.gpu_gb:g} GB")
        print(gpu_count_table(counts, args.gpu_gb, mode))
    print()
    for name, res, label in (("sd3.5-large", None, "SD3.5-Large"), ("flux-dev-1024", 512, "FLUX.1-dev 512 px"),
                              ("flux-dev-1024", None, "FLUX.1-dev 1024 px")):
        ok = [n for n in counts if load_estimate(name, gpus=n).fits(args.gpu_gb)
              and estimate(name, gpus=n, resolution=res).fits(args.gpu_gb)]
        start, train = load_estimate(name, gpus=args.gpus), estimate(name, gpus=args.gpus, resolution=res)
        print(f"{label}, AMP, {args.gpus} x {args.gpu_gb:g} GB: starts at {start.total_gb:.1f} GB (was "
              f"{start.before_gb:.1f}), trains at {train.total_gb:.1f} GB: "
              f"{'starts and trains' if start.fits(args.gpu_gb) and train.fits(args.gpu_gb) else 'does NOT fit'}; "
              f"fits on {', '.join(map(str, ok)) or 'none'} of {', '.join(map(str, counts))} GPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-GPU peak memory of SiD-DiT training for every real teacher under FSDP, from the memory model in
``sidrepro/distill/memory.py`` (model states exact, activations estimated): which teachers fit, in which mode.

    .venv/bin/python bench/memory_model.py --gpus 8 --gpu-gb 80
"""

from __future__ import annotations

import argparse
import sys

from sidrepro.distill.memory import table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-gb", type=float, default=80.0)
    args = p.parse_args()
    print("GB = 1e9 bytes; batch 1 per GPU, gradient checkpointing on; SD3/FLUX park their encoders on the CPU")
    print(table(args.gpus, args.gpu_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())

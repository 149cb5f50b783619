"""Synthetic image-text parquet shards in the midjourney-v6-llava layout (a ``llava`` caption column and PNG bytes
in the Hugging Face datasets image struct) for the smoke workflow's data-aided runs."""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import pandas as pd
from PIL import Image


def build(out: Path, captions: list[str], n_shards: int = 2, rows: int = 8, size: int = 48,
          seed: int = 0) -> list[Path]:
    """Write ``n_shards`` files ``train_{k:03d}.parquet`` of ``rows`` random images each; return their paths."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        images, texts = [], []
        for i in range(rows):
            img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
            for _ in range(4):
                x, y = rng.randrange(size - 12), rng.randrange(size - 12)
                img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 12, y + 12))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{s}-{i}.png"})
            texts.append(captions[(s * rows + i) % len(captions)])
        path = out / f"train_{s:03d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pd.DataFrame({"llava": texts, "image": images}).to_parquet(tmp)
        tmp.replace(path)  # atomic: a killed job never leaves a half-written shard behind
        paths.append(path)
    return paths


def main() -> None:
    """Command line: ``python workflow/scripts/synthetic_shards.py --out DIR --captions FILE [--shards 2]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--captions", type=Path, required=True, help="one caption per line")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    captions = [line.strip() for line in args.captions.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        parser.error(f"{args.captions} holds no captions")
    build(args.out, captions, args.shards, args.rows, seed=args.seed)


if __name__ == "__main__":
    main()

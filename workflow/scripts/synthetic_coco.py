"""A synthetic COCO-2014-val layout (``val2014/*.jpg`` and ``annotations/captions_val2014.json``) for the smoke
workflow: coloured-block images with two-word captions, deterministic in ``--seed``."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image

WORDS = ["red", "blue", "cat", "dog", "car", "tree", "house", "boat", "sky", "table"]


def build(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Write ``n`` images and their captions under ``root`` in the COCO-2014 val layout; return ``root``."""
    rng = random.Random(seed)
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        w, h = rng.choice([(64, 48), (48, 64), (80, 80)])
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(6):
            x, y = rng.randrange(w - 8), rng.randrange(h - 8)
            img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
        name = f"COCO_val2014_{i + 1:012d}.jpg"
        img.save(root / "val2014" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        annotations.append({"id": 100 + i, "image_id": i + 1,
                            "caption": f"a {rng.choice(WORDS)} {rng.choice(WORDS)}"})
    # The annotation file last: it is the rule's declared output, so it marks a complete folder.
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return root


def main() -> None:
    """Command line: ``python workflow/scripts/synthetic_coco.py --out DIR [--n 16] [--seed 0]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()

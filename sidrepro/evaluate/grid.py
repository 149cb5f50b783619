"""A captioned contact sheet of a sample folder: the first images in prompt-id order, for reports and a quick look."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..atomic import write_atomic


def sample_grid(folder: Path, out: Path, *, count: int = 16, columns: int = 4, tile: int = 160) -> Path:
    """Write ``out`` (PNG): the first ``count`` images of ``folder``'s merged ``manifest.jsonl`` in prompt-id order,
    ``columns`` per row, each resized to ``tile`` px with its caption underneath. Written atomically."""
    manifest = Path(folder) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: merge the shards first (`sidrepro merge-samples {folder}`)")
    if count < 1 or columns < 1 or tile < 16:
        raise ValueError(f"need count >= 1, columns >= 1 and tile >= 16, got {count}, {columns}, {tile}")
    rows = sorted((json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()),
                  key=lambda r: r["prompt_id"])[:count]
    if not rows:
        raise ValueError(f"{manifest} lists no images")
    font = ImageFont.load_default()
    text_h = 36  # three short lines of the default bitmap font
    ncols = min(columns, len(rows))
    nrows = -(-len(rows) // ncols)
    sheet = Image.new("RGB", (ncols * tile, nrows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % ncols) * tile, (i // ncols) * (tile + text_h)
        with Image.open(Path(folder) / row["file"]) as img:
            sheet.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        lines = textwrap.wrap(str(row.get("caption", "")), width=max(8, tile // 6))[:3]
        draw.multiline_text((x + 2, y + tile + 1), "\n".join(lines), fill="black", font=font, spacing=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out), lambda handle: sheet.save(handle, format="PNG"))
    return Path(out)

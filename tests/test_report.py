"""Report pieces: the captioned sample grid and the tables' numbers as DVC metrics JSON."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sidrepro.evaluate.grid import sample_grid
from sidrepro.tables import build_table, table_metrics


def test_grid_tiles_images_in_prompt_order(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    rows = []
    for pid, colour in reversed(list(enumerate(colours))):  # manifest order is not prompt order
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{pid:06d}.png")
        rows.append({"prompt_id": pid, "file": f"{pid:06d}.png", "caption": f"caption {pid}"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = sample_grid(tmp_path, tmp_path / "grid" / "g.png", count=5, columns=3, tile=40)
    with Image.open(out) as grid:
        assert grid.size == (3 * 40, 2 * (40 + 36))
        assert [grid.getpixel((40 * (i % 3) + 20, 76 * (i // 3) + 20)) for i in range(5)] == colours
        assert grid.getpixel((40 * 2 + 20, 76 + 20)) == (255, 255, 255)  # the sixth cell stays empty
    with pytest.raises(FileNotFoundError, match="merge-samples"):
        sample_grid(tmp_path / "nothing", tmp_path / "x.png")


def test_table_metrics_lists_measured_rows_with_paper_ours_diff(tmp_path):
    record = {"fid": 30.5, "clip_score": 0.31, "num_images": 16, "protocol_id": "paper@1", "steps": 4}
    path = tmp_path / "tiny-sana--data-free.json"
    path.write_text(json.dumps(record))
    mapping = {"tiny-sana--data-free": {"table": "table1", "block": "SANA 0.6B (RF)", "setting": "data-free"}}
    data = table_metrics(build_table("table1", "v2", [path], mapping, run="smoke"))
    assert data["run"] == "smoke" and data["table"] == "table1" and list(data["rows"]) == ["tiny-sana--data-free"]
    row = data["rows"]["tiny-sana--data-free"]
    assert row["FID_coco10k"] == {"paper": 29.43, "ours": 30.5, "diff": pytest.approx(1.07)}
    assert row["num_images"] == 16 and "HPSv2" not in row  # unmeasured metrics are left out, not zero

"""An exported student folder: the teacher's diffusers pipeline layout with the distilled transformer and a
``sidrepro_student.json`` that names the teacher, setting and few-step sampler. Written by
``sidrepro.distill.export``; read here, so that sampling and evaluation need not know about training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .registry import get_teacher

STUDENT_FILE = "sidrepro_student.json"


def load_student(folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(adapter, generator transformer, student metadata) of an exported student folder."""
    from .load import load_teacher

    meta_file = Path(folder) / STUDENT_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{folder} is not an exported student (no {STUDENT_FILE}); export one with "
                                f"`sidrepro export`")
    meta = json.loads(meta_file.read_text())
    entry = replace(get_teacher(meta["teacher"]), resolution=int(meta["resolution"]))
    adapter = load_teacher(entry, folder, device=device, dtype=dtype)
    return adapter, adapter.load_transformer().eval().requires_grad_(False), meta


def student_summary(folder: Path) -> dict:
    """The student's metadata without loading any weights."""
    return json.loads((Path(folder) / STUDENT_FILE).read_text())

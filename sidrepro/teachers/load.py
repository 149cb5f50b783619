"""Open a teacher: pick the family's adapter for a registry entry and a local snapshot folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import TeacherAdapter
from .registry import TeacherEntry, get_teacher

_REQUIRED = ("model_index.json", "transformer/config.json", "scheduler")


def adapter_class(family: str) -> type[TeacherAdapter]:
    """The adapter class of a teacher family."""
    if family == "sana":
        from .sana import SanaAdapter
        return SanaAdapter
    if family == "sd3":
        from .sd3 import SD3Adapter
        return SD3Adapter
    if family == "flux":
        from .flux import FluxAdapter
        return FluxAdapter
    raise ValueError(f"unknown teacher family {family!r}; choose one of sana, sd3, flux")


def check_snapshot(folder: Path, name: str) -> None:
    """Fail early, naming the fix, when ``folder`` is not a complete diffusers snapshot."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no snapshot of {name!r} at {folder}: run `sidrepro fetch {name}` (hub teachers) "
                                f"or `sidrepro zoo` (tiny teachers), or point the config at the folder that holds it")
    missing = [p for p in _REQUIRED if not (folder / p).exists()]
    if missing:
        raise FileNotFoundError(f"snapshot of {name!r} at {folder} is incomplete (missing {', '.join(missing)}): "
                                f"delete the folder and fetch it again")


def load_teacher(entry: TeacherEntry | str, folder: str | Path, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, text_dtype: torch.dtype | None = None) -> TeacherAdapter:
    """The adapter for ``entry`` (or a registry name) reading the snapshot in ``folder``."""
    entry = get_teacher(entry) if isinstance(entry, str) else entry
    folder = Path(folder)
    check_snapshot(folder, entry.name)
    return adapter_class(entry.family)(entry, folder, device=device, dtype=dtype, text_dtype=text_dtype)

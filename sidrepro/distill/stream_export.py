"""A trained network written as a diffusers model folder straight from a checkpoint, a group of tensors at a
time: the host holds about one group (256 MB by default), never the whole network.

The folder is what ``save_pretrained(safe_serialization=True)`` writes for the same weights, byte for byte: its
``config.json``, ``diffusion_pytorch_model.safetensors`` or, above ``max_shard_size``, the numbered shards and their
``.index.json``, split where diffusers splits them. Tensors keep the checkpoint's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_text_atomic
from .checkpoint import CheckpointError, _check_folder, _dcp_load, _read_dcp_metadata
from .tensor_files import INDEX_FILE, TensorFiles, write_safetensors

WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"


class CheckpointTensors:
    """Model ``name``'s tensors in a checkpoint folder, readable a few at a time without a process group."""

    def __init__(self, ckpt: Path, name: str):
        self.ckpt, self.name = Path(ckpt), name
        manifest = _check_folder(self.ckpt, verify=False)
        if name not in manifest["models"]:
            raise CheckpointError(f"{ckpt}: no model {name!r} in this checkpoint (it holds {manifest['models']})")
        self.sharded = manifest["sharded"]
        if self.sharded:
            meta = _read_dcp_metadata(self.ckpt)
            self._flat = {p[2]: flat for flat, p in meta.planner_data.items() if p[:2] == ("model", name)
                          and len(p) == 3}
            self.entries = {k: (meta.state_dict_metadata[f].properties.dtype, tuple(meta.state_dict_metadata[f].size))
                            for k, f in self._flat.items()}
        else:
            self._files = TensorFiles([self.ckpt / f"{name}.safetensors"])
            self.entries = {k: (i.dtype, i.shape) for k, i in self._files.info.items()}

    def fetch(self, keys: list[str]) -> dict[str, Tensor]:
        """The full tensors ``keys`` (CPU, saved dtype): DCP reads every rank's chunk of just these."""
        out = {k: torch.empty(self.entries[k][1], dtype=self.entries[k][0]) for k in keys}
        if not self.sharded:
            for k, t in out.items():
                self._files.read_rows(k, 0, t)
            return out
        buf = {self._flat[k]: t for k, t in out.items()}
        try:
            _dcp_load(buf, self.ckpt, distributed=False)
        except Exception as e:
            raise CheckpointError(f"{self.ckpt}: reading model {self.name!r} failed ({type(e).__name__}: {e})") from e
        return out


def write_transformer(ckpt: Path, name: str, config: dict, cls: type, out: Path, *,
                      max_shard_size: int | str = "10GB", group_bytes: int = 1 << 28) -> Path:
    """Write model ``name`` of checkpoint ``ckpt`` as the diffusers model folder ``out`` of class ``cls`` with
    ``config`` (the teacher's ``transformer/config.json``), streaming ``group_bytes`` at a time."""
    from huggingface_hub import split_torch_state_dict_into_shards

    with torch.device("meta"):  # the config and the state-dict order only; no memory
        net = cls.from_config(config)
    order = list(net.state_dict())
    src = CheckpointTensors(ckpt, name)
    if set(order) != set(src.entries):
        missing, extra = set(order) - set(src.entries), set(src.entries) - set(order)
        raise CheckpointError(f"{ckpt}: model {name!r} does not fit {cls.__name__} with the teacher's config (missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}): export with the teacher "
                              "snapshot the run was trained from")
    out.mkdir(parents=True, exist_ok=True)
    net.save_config(out)
    shapes = {k: torch.empty(src.entries[k][1], dtype=src.entries[k][0], device="meta") for k in order}
    split = split_torch_state_dict_into_shards(shapes, max_shard_size=max_shard_size,
                                               filename_pattern=WEIGHTS_PATTERN)
    for filename, keys in split.filename_to_tensors.items():
        write_safetensors(out / filename, {k: src.entries[k] for k in keys}, src.fetch, metadata={"format": "pt"},
                          group_bytes=group_bytes)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        write_text_atomic(out / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out

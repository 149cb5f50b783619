"""Safetensors files read a row range at a time and written a few tensors at a time, so that neither a sharded
load nor an export ever holds a whole network.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape and the byte
range of its row-major data) and the data. A rank's FSDP shard of a tensor is a range of its first dimension, so it
is one contiguous byte range of the file: :class:`TensorFiles` reads exactly those bytes with ``pread`` (no memory
map, so the process's resident memory holds only what it asked for). :func:`write_safetensors` writes the same bytes
``safetensors.torch.save_file`` writes for the same tensors, fetching them in groups as it goes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_atomic

# Dtype names in the order of safetensors' Dtype enum: a file lists its tensors by this rank, descending, then by name.
_NAMES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64",
          "U64"]
_TORCH = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
          "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
          "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "U64": torch.uint64}
_NAME = {v: k for k, v in _TORCH.items()}
_RANK = {name: i for i, name in enumerate(_NAMES)}
_CHUNK = 1 << 30  # bytes per pread (Linux moves at most ~2 GiB per call)

SINGLE_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and the absolute byte offset of its data."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one index of the first dimension (the whole tensor for a scalar)."""
        n = 1
        for s in self.shape[1:]:
            n *= s
        return n * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * (self.shape[0] if self.shape else 1)


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file (without reading their data)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e}); the file is corrupt, fetch it again") from e
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _TORCH:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which this reader does not know")
        begin, _ = entry["data_offsets"]
        out[name] = TensorInfo(path, _TORCH[entry["dtype"]], tuple(entry["shape"]), 8 + n + begin)
    return out


class TensorFiles:
    """The tensors of a set of safetensors files (a diffusers folder's single file or its shards), by name."""

    def __init__(self, files: Iterable[Path]):
        self.files = [Path(f) for f in files]
        self.info: dict[str, TensorInfo] = {}
        for f in self.files:
            self.info.update(read_header(f))
        self.bytes_read = 0  # every byte this reader has returned: the test of "only my shard"
        self.largest_read = 0

    @classmethod
    def from_folder(cls, folder: Path) -> TensorFiles:
        """The weights of a diffusers model folder: ``diffusion_pytorch_model.safetensors`` or the shards its
        ``.index.json`` lists."""
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls(folder / name for name in sorted(set(weight_map.values())))
        if (folder / SINGLE_FILE).exists():
            return cls([folder / SINGLE_FILE])
        raise FileNotFoundError(f"{folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}: only safetensors weights load "
                                "sharded; fetch the snapshot again (`sidrepro fetch`) or convert its weights to "
                                "safetensors")

    def keys(self) -> set[str]:
        return set(self.info)

    def read_rows(self, name: str, start: int, out: Tensor) -> None:
        """Fill ``out`` with rows ``start .. start + len(out)`` of tensor ``name`` (the whole tensor if it is a
        scalar), converted to ``out``'s dtype and device. Reads straight into ``out`` where it is a contiguous CPU
        tensor of the file's dtype; otherwise through a buffer of just those rows."""
        info = self.info[name]
        rows = out.shape[0] if out.dim() else 1
        if tuple(out.shape[1:]) != info.shape[1:] or (info.shape and start + rows > info.shape[0]):
            raise ValueError(f"{info.file}: tensor {name!r} {list(info.shape)} has no rows {start}..{start + rows} of "
                             f"shape {list(out.shape)}")
        nbytes = rows * info.row_bytes
        direct = out.device.type == "cpu" and out.dtype == info.dtype and out.is_contiguous()
        buf = out if direct else torch.empty(out.shape, dtype=info.dtype)
        if nbytes:
            view = memoryview(buf.detach().reshape(-1).view(torch.uint8).numpy())
            with open(info.file, "rb", buffering=0) as f:
                fd, pos, done = f.fileno(), info.offset + start * info.row_bytes, 0
                while done < nbytes:
                    got = os.preadv(fd, [view[done:min(nbytes, done + _CHUNK)]], pos + done)
                    if got <= 0:
                        raise ValueError(f"{info.file} ends inside tensor {name!r}: the file is truncated, fetch it "
                                         "again")
                    done += got
        if not direct:
            out.copy_(buf)
        self.bytes_read += nbytes
        self.largest_read = max(self.largest_read, nbytes)


def serialised_order(entries: dict[str, tuple[torch.dtype, Sequence[int]]]) -> list[str]:
    """The order in which safetensors lays out tensors: dtype rank descending, then name."""
    return sorted(entries, key=lambda k: (-_RANK[_NAME[entries[k][0]]], k))


def write_safetensors(path: Path, entries: dict[str, tuple[torch.dtype, Sequence[int]]],
                      fetch: Callable[[list[str]], dict[str, Tensor]], *, metadata: dict[str, str] | None = None,
                      group_bytes: int = 1 << 28) -> None:
    """Write ``path`` (atomically) with the tensors ``entries`` names (``{name: (dtype, shape)}``), fetching their
    values a group of at most ``group_bytes`` (or a single tensor) at a time with ``fetch(names) -> {name: tensor}``.
    The file is byte-identical to ``safetensors.torch.save_file`` of the same tensors and metadata."""
    order = serialised_order(entries)
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    sizes, pos = {}, 0
    for name in order:
        dtype, shape = entries[name]
        n = dtype.itemsize
        for s in shape:
            n *= s
        sizes[name] = n
        header[name] = {"dtype": _NAME[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    groups, current, size = [], [], 0
    for name in order:
        if current and size + sizes[name] > group_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += sizes[name]
    if current:
        groups.append(current)

    def write(handle) -> None:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for group in groups:
            tensors = fetch(group)
            for name in group:
                t = tensors[name]
                dtype, shape = entries[name]
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise ValueError(f"tensor {name!r}: fetched {t.dtype} {list(t.shape)}, expected {dtype} "
                                     f"{list(shape)}")
                if t.numel():
                    handle.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del tensors

    write_atomic(Path(path), write)

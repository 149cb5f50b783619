"""Image-text shards for the data-aided setting (and captions-only for data-free): parquet shards in the
midjourney-v6-llava layout, encoded once per shard into a cache file of latents, prompt conditioning and captions.

Layout (spec §6.4): ``train_000.parquet`` ... with a caption column (``llava``) and an image column (``image``) of
encoded image bytes, raw or as the Hugging Face datasets struct ``{"bytes", "path"}``. Training rotates shards: the
active shard of the global batch that starts at ``nimg`` is ``floor(nimg / images_per_shard) mod n_shards``
(19,720 images per shard in the official code). At a shard switch every rank encodes the strided slice
``rows[rank::world]``, rank 0 merges the parts into one cache, and all ranks read it (spec §6.4, correction 1).

Cache files are ``torch.save`` dictionaries of plain tensors, lists, strings and numbers (no pickled classes), read
back with ``torch.load(weights_only=True, mmap=True)`` so that ranks on one node share the pages. Each has a JSON
sidecar (shard name, sha256 of the shard file, row count, skipped rows, resolution, ...), written after the cache
file: a cache is reused only when its sidecar matches the shard's current hash and the encoding settings, otherwise
it is rebuilt. Both files are written to a temporary sibling and renamed, so a crash never leaves half a cache.

Stored dtypes: latents fp32 by default (``latent_dtype``), conditioning tensors as the encoder returns them unless
``cond_dtype`` is given (floating tensors only; masks keep their dtype).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import write_atomic, write_json_atomic
from .prompts import prompt_indices

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_IMAGES_PER_SHARD",
    "SHARD_PATTERN",
    "ShardCache",
    "ShardData",
    "cache_path",
    "encode_shard",
    "file_sha256",
    "is_fresh",
    "list_shards",
    "load_cache",
    "merge_caches",
    "preprocess_image",
    "read_shard",
]

log = logging.getLogger(__name__)

DEFAULT_IMAGES_PER_SHARD = 19_720  # spec §6.4: 986,000 images / 50 "zips" in the official code
SHARD_PATTERN = "train_*.parquet"
CACHE_FORMAT = 1
_READ_BATCH = 64  # parquet rows decoded at a time while streaming a shard


# --- shards -------------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list[Any]:
    # train_2 before train_10 even when a mirror dropped the zero padding.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_shards(folder: Path, pattern: str = SHARD_PATTERN) -> list[Path]:
    """The shard files in ``folder`` matching ``pattern``, in natural order (``train_000.parquet`` first).
    ``ValueError`` naming the folder and the pattern when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image-text folder {folder} does not exist: download the parquet shards ({pattern}, "
                         f"midjourney-v6-llava layout) there or point the config at their folder")
    shards = sorted((p for p in folder.glob(pattern) if p.is_file()), key=_natural_key)
    if not shards:
        raise ValueError(f"no shard matching {pattern!r} in {folder}: put the parquet shards (train_000.parquet, "
                         f"train_001.parquet, ...) there or set the shard pattern")
    return shards


def _open_parquet(path: Path):
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise ValueError(f"shard {path} does not exist: check the shard folder")
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for damaged files
        raise ValueError(f"shard {path} is not a readable parquet file ({err}): download it again") from err


def _check_columns(path: Path, schema, caption_column: str, image_column: str | None) -> None:
    import pyarrow as pa

    names = list(schema.names)
    missing = [c for c in (caption_column, image_column) if c is not None and c not in names]
    if missing:
        raise ValueError(f"shard {Path(path).name} has no column {', '.join(map(repr, missing))}; its columns are "
                         f"{names}: set caption_column / image_column to the right names")
    ctype = schema.field(caption_column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)):
        raise ValueError(f"shard {Path(path).name}: caption column {caption_column!r} holds {ctype}, not strings")
    if image_column is not None:
        itype = schema.field(image_column).type
        ok = pa.types.is_binary(itype) or pa.types.is_large_binary(itype) or (
            pa.types.is_struct(itype) and itype.get_field_index("bytes") >= 0)
        if not ok:
            raise ValueError(f"shard {Path(path).name}: image column {image_column!r} holds {itype}; expected "
                             f"encoded image bytes (binary or a struct with a 'bytes' field)")


def _image_bytes(value: Any) -> bytes:
    # Hugging Face datasets stores images as {"bytes": ..., "path": ...}; a row without bytes counts as corrupt.
    if isinstance(value, Mapping):
        value = value.get("bytes")
    return bytes(value) if value else b""


def _iter_rows(path: Path, *, caption_column: str, image_column: str, with_images: bool, rank: int = 0,
               world: int = 1) -> Iterator[tuple[int, str, bytes | None]]:
    """Stream ``(row, caption, image bytes | None)`` of the rows ``rank::world``, a few rows in memory at a time
    (a real shard holds gigabytes of images)."""
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    _check_columns(path, schema, caption_column, image_column if with_images else None)
    columns = [caption_column, image_column] if with_images else [caption_column]
    row = 0
    for rb in pf.iter_batches(batch_size=_READ_BATCH, columns=columns):
        captions = rb.column(0).to_pylist()
        images = rb.column(1).to_pylist() if with_images else None
        for j in range(rb.num_rows):
            if (row + j) % world == rank:
                yield row + j, captions[j] or "", None if images is None else _image_bytes(images[j])
        row += rb.num_rows


def read_shard(path: Path, *, caption_column: str = "llava", image_column: str = "image"
               ) -> tuple[list[str], list[bytes]]:
    """All captions and encoded image bytes of one shard (missing captions become ``""``, missing images
    ``b""``). Loads the whole shard; :func:`encode_shard` streams instead. ``ValueError`` naming a missing column
    and the columns present."""
    captions: list[str] = []
    images: list[bytes] = []
    for _, caption, data in _iter_rows(Path(path), caption_column=caption_column, image_column=image_column,
                                       with_images=True):
        captions.append(caption)
        images.append(data or b"")
    return captions, images


def preprocess_image(data: bytes, resolution: int) -> Tensor:
    """Encoded image bytes -> float tensor ``(3, resolution, resolution)`` in [-1, 1] (spec §6.4): decode with
    PIL, convert to RGB, resize the shorter side to ``resolution``, centre crop.

    The resize uses PIL's Lanczos filter: the shards' images are mostly larger than the training resolution, and
    Lanczos is the sharpest properly antialiased downsampler PIL has; it is also the filter of the evaluation
    pipeline (eval_protocol.md), so real images are not blurrier than what the metrics compare against.
    Undecodable bytes raise ``ValueError`` (the shard encoder skips and counts such rows)."""
    from PIL import Image

    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if not data:
        raise ValueError("corrupt image: no image bytes in this row")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file fails here, not half-way through the resize
            rgb = img.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ... for bad files
        raise ValueError(f"corrupt image: cannot decode {len(data)} bytes ({type(err).__name__}: {err})") from err
    w, h = rgb.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.float().div_(127.5).sub_(1.0)


# --- hashing and atomic files ---------------------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hex. Remembered within the process while the file's size, times and inode stay the
    same (every rank checks every shard switch; a real shard is gigabytes)."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


# --- cache files ------------------------------------------------------------------------------------------
def cache_path(cache_dir: Path, shard: Path, *, resolution: int | None, with_images: bool = True, rank: int = 0,
               world: int = 1) -> Path:
    """Where the cache of ``shard`` lives: ``<stem>-img<resolution>.pt`` (latents and text) or ``<stem>-txt.pt``
    (text only), with ``.part<rank>of<world>`` for one rank's share. The merged cache has the ``world=1`` name, so
    a run resumed on another number of GPUs reuses it."""
    kind = f"img{resolution}" if with_images else "txt"
    part = f".part{rank}of{world}" if world > 1 else ""
    return Path(cache_dir) / f"{Path(shard).stem}-{kind}{part}.pt"


def _sidecar(cache: Path) -> Path:
    return cache.with_suffix(".json")


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _settings(shard: Path, *, resolution: int | None, with_images: bool, rank: int, world: int, key: str,
              caption_column: str, image_column: str, latent_dtype: torch.dtype,
              cond_dtype: torch.dtype | None) -> dict[str, Any]:
    # Everything that changes the content of a cache; its sidecar must repeat all of it to be reused.
    return {
        "format": CACHE_FORMAT,
        "shard": Path(shard).name,
        "sha256": file_sha256(shard),
        "resolution": resolution if with_images else None,  # text-only caches do not depend on it
        "with_images": with_images,
        "rank": rank,
        "world": world,
        "key": key,
        "caption_column": caption_column,
        "image_column": image_column if with_images else None,
        "latent_dtype": _dtype_name(latent_dtype) if with_images else None,
        "cond_dtype": _dtype_name(cond_dtype),
    }


def is_fresh(cache: Path, settings: Mapping[str, Any]) -> bool:
    """Whether ``cache`` exists and its sidecar repeats every entry of ``settings`` (shard hash included)."""
    cache = Path(cache)
    if not cache.is_file():
        return False
    try:
        meta = json.loads(_sidecar(cache).read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in settings.items())


def _cond_fields(cond: Any, batch: int) -> dict[str, Tensor | None]:
    """The tensor fields of an ``encode_prompts`` result (a dataclass or a mapping of tensors / ``None``)."""
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        items = {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    elif isinstance(cond, Mapping):
        items = dict(cond)
    else:
        raise TypeError(f"encode_prompts must return a dataclass of tensors (e.g. Conditioning) or a dict of "
                        f"tensors, got {type(cond).__name__}")
    for name, value in items.items():
        if not isinstance(name, str):
            raise TypeError(f"conditioning field names must be strings, got {name!r}")
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"conditioning field {name!r} is a {type(value).__name__}, not a tensor or None")
        if value is not None and (value.dim() == 0 or value.shape[0] != batch):
            raise ValueError(f"conditioning field {name!r} has shape {tuple(value.shape)}; expected {batch} rows "
                             f"first (one per prompt)")
    return items


def _cat_cond(parts: Sequence[Mapping[str, Tensor | None]]) -> tuple[list[str], dict[str, Tensor]]:
    """Concatenate per-batch conditioning along rows; ``None`` fields stay ``None`` (stored as absent)."""
    if not parts:
        return [], {}
    names = list(parts[0])
    if any(set(p) != set(names) for p in parts):
        raise ValueError(f"encode_prompts returned different fields across batches: {[list(p) for p in parts]}")
    out: dict[str, Tensor] = {}
    for name in names:
        values = [p[name] for p in parts]
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            raise ValueError(f"conditioning field {name!r} is None in some batches and a tensor in others")
        shapes = {tuple(v.shape[1:]) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"conditioning field {name!r} changes shape across batches {sorted(shapes)}: the "
                             f"encoder must pad to a fixed length")
        out[name] = torch.cat(values)
    return names, out


def encode_shard(path: Path, cache_dir: Path, *, encode_images: Callable[[Tensor], Tensor] | None,
                 encode_prompts: Callable[[list[str]], Any], resolution: int | None, batch: int = 16, rank: int = 0,
                 world: int = 1, with_images: bool = True, caption_column: str = "llava",
                 image_column: str = "image", key: str = "", latent_dtype: torch.dtype = torch.float32,
                 cond_dtype: torch.dtype | None = None) -> Path:
    """Encode rank ``rank``'s rows (``rows[rank::world]``) of one shard into a cache file; return its path.

    Per batch of ``batch`` rows: images are decoded by :func:`preprocess_image` (rows with corrupt images are
    skipped and counted), ``encode_images`` maps ``(B, 3, R, R)`` in [-1, 1] to latents, ``encode_prompts`` maps
    the captions to a dataclass or dict of tensors (e.g. ``Conditioning``). ``with_images=False`` stores captions
    and their conditioning only (images are not even read). ``key`` names the encoder (e.g. teacher and
    revision) and must match for reuse. An existing cache whose sidecar matches the shard's sha256 and these
    settings is returned without encoding; otherwise it is rebuilt. Merge the per-rank parts with
    :func:`merge_caches`.
    """
    path, cache_dir = Path(path), Path(cache_dir)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    if with_images and (encode_images is None or resolution is None):
        raise ValueError("encoding images needs encode_images and a resolution (or pass with_images=False)")
    # Clear errors (missing file, damaged file, wrong columns) before hashing gigabytes or touching the cache.
    _check_columns(path, _open_parquet(path).schema_arrow, caption_column, image_column if with_images else None)
    settings = _settings(path, resolution=resolution, with_images=with_images, rank=rank, world=world, key=key,
                         caption_column=caption_column, image_column=image_column, latent_dtype=latent_dtype,
                         cond_dtype=cond_dtype)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_path(cache_dir, path, resolution=resolution, with_images=with_images, rank=rank, world=world)
    if is_fresh(out, settings):
        log.info("reusing %s (matches %s)", out, path.name)
        return out
    _sidecar(out).unlink(missing_ok=True)  # the sidecar is the commit marker: none until the new cache is whole

    rows: list[int] = []
    captions: list[str] = []
    skipped: list[int] = []
    latents: list[Tensor] = []
    conds: list[dict[str, Tensor | None]] = []
    pending: list[tuple[int, str, Tensor | None]] = []

    def flush() -> None:
        if not pending:
            return
        caps = [c for _, c, _ in pending]
        with torch.no_grad():
            if with_images:
                assert encode_images is not None
                z = encode_images(torch.stack([img for _, _, img in pending]))
                if not isinstance(z, Tensor) or z.dim() == 0 or z.shape[0] != len(pending):
                    raise ValueError(f"encode_images must return a tensor with {len(pending)} rows first, got "
                                     f"{getattr(z, 'shape', type(z).__name__)}")
                latents.append(z.detach().to("cpu", latent_dtype))
            fields = _cond_fields(encode_prompts(caps), len(pending))
        conds.append({name: None if v is None else _store(v, cond_dtype) for name, v in fields.items()})
        rows.extend(r for r, _, _ in pending)
        captions.extend(caps)
        pending.clear()

    for row, caption, data in _iter_rows(path, caption_column=caption_column, image_column=image_column,
                                         with_images=with_images, rank=rank, world=world):
        image = None
        if with_images:
            try:
                image = preprocess_image(data or b"", int(resolution or 0))
            except ValueError as err:
                log.debug("%s row %d skipped: %s", path.name, row, err)
                skipped.append(row)
                continue
        pending.append((row, caption, image))
        if len(pending) == batch:
            flush()
    flush()
    if skipped:
        log.warning("%s: skipped %d rows with corrupt images (rank %d of %d)", path.name, len(skipped), rank, world)

    names, cond = _cat_cond(conds)
    lat = torch.cat(latents) if latents else None
    meta = {**settings, "rows": len(rows), "skipped": len(skipped), "skipped_rows": skipped,
            "latent_shape": None if lat is None else list(lat.shape[1:]),
            "cond_shapes": {k: list(v.shape[1:]) for k, v in cond.items()}}
    payload = {"meta": meta, "rows": torch.tensor(rows, dtype=torch.long), "captions": captions, "latents": lat,
               "cond": cond, "cond_fields": names}
    write_atomic(out, lambda h: torch.save(payload, h))
    write_json_atomic(_sidecar(out), meta)
    return out


def _store(value: Tensor, dtype: torch.dtype | None) -> Tensor:
    value = value.detach().to("cpu")
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.contiguous()


@dataclasses.dataclass
class ShardData:
    """One loaded cache: original shard rows, captions, latents (``None`` for text-only caches), the
    conditioning tensors by field name (fields that were ``None`` are absent but listed in ``cond_fields``) and
    the sidecar metadata."""

    meta: dict[str, Any]
    rows: Tensor
    captions: list[str]
    latents: Tensor | None
    cond: dict[str, Tensor]
    cond_fields: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def select(self, index: Sequence[int], make_conditioning: Callable[..., Any] | None = None
               ) -> tuple[Tensor | None, Any, list[str]]:
        """Rows ``index`` (positions in this cache) as ``(latents, conditioning, captions)``. The conditioning is
        ``make_conditioning(**fields)`` (e.g. ``Conditioning``) or a dict ``{field: tensor | None}``; tensors are
        fresh CPU copies in the stored dtype."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        fields = {name: self.cond[name][idx] if name in self.cond else None for name in self.cond_fields}
        cond = make_conditioning(**fields) if make_conditioning is not None else fields
        latents = None if self.latents is None else self.latents[idx]
        return latents, cond, [self.captions[i] for i in idx.tolist()]


def load_cache(path: Path, *, mmap: bool = True) -> ShardData:
    """Read a cache file (``weights_only``; memory-mapped by default, so ranks on one node share pages and only
    the rows used are read)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise ValueError(f"cache {path} cannot be read ({err}): delete it and its .json sidecar to rebuild") from err
    if not isinstance(data, dict) or data.get("meta", {}).get("format") != CACHE_FORMAT:
        raise ValueError(f"cache {path} is not a format-{CACHE_FORMAT} shard cache: delete it to rebuild")
    return ShardData(meta=dict(data["meta"]), rows=data["rows"], captions=list(data["captions"]),
                     latents=data["latents"], cond=dict(data["cond"]), cond_fields=list(data["cond_fields"]))


def merge_caches(parts: Sequence[Path], out: Path) -> Path:
    """Merge the per-rank caches of one shard (``rank 0..world-1``, any order) into ``out``, rows back in shard
    order, so the result equals a ``world=1`` encoding and carries its sidecar (``rank 0``, ``world 1``).
    The parts must agree on shard hash and settings."""
    if not parts:
        raise ValueError("merge_caches needs at least one part")
    loaded = [load_cache(Path(p)) for p in parts]
    first = loaded[0].meta
    world = first["world"]
    same = ("format", "shard", "sha256", "resolution", "with_images", "world", "key", "caption_column",
            "image_column", "latent_dtype", "cond_dtype")
    for p, d in zip(parts, loaded, strict=True):
        diff = [k for k in same if d.meta.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"cache part {p} differs from {parts[0]} in {diff}: re-encode the shard on all ranks")
    ranks = sorted(d.meta["rank"] for d in loaded)
    if ranks != list(range(world)):
        raise ValueError(f"merge_caches needs one part per rank 0..{world - 1}, got ranks {ranks}")
    filled = [d for d in loaded if len(d)]
    names = filled[0].cond_fields if filled else []
    for d in filled:
        if d.cond_fields != names or set(d.cond) != set(filled[0].cond):
            raise ValueError("cache parts hold different conditioning fields: re-encode the shard on all ranks")
    rows = torch.cat([d.rows for d in loaded])
    order = torch.argsort(rows)
    captions = [c for d in loaded for c in d.captions]
    cond = {k: torch.cat([d.cond[k] for d in filled])[order] for k in (filled[0].cond if filled else {})}
    lat = torch.cat([d.latents for d in filled])[order] if filled and filled[0].latents is not None else None
    skipped = sorted(r for d in loaded for r in d.meta["skipped_rows"])
    meta = {**first, "rank": 0, "world": 1, "rows": len(rows), "skipped": len(skipped), "skipped_rows": skipped,
            "latent_shape": None if lat is None else list(lat.shape[1:]),
            "cond_shapes": {k: list(v.shape[1:]) for k, v in cond.items()}}
    payload = {"meta": meta, "rows": rows[order], "captions": [captions[i] for i in order.tolist()],
               "latents": lat, "cond": cond, "cond_fields": names}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(out).unlink(missing_ok=True)
    write_atomic(out, lambda h: torch.save(payload, h))
    write_json_atomic(_sidecar(out), meta)
    return out


# --- the training-time loader -------------------------------------------------------------------------------
def _period_seed(seed: int, period: int) -> int:
    # Each visit of a shard gets its own shuffle, so the n_shards-periodic rotation does not replay batches.
    digest = hashlib.sha256(f"sidrepro-shard:{seed}:{period}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShardCache:
    """Batches ``(latents, conditioning, captions)`` from rotating image-text shards, encoded on first use.

    The global batch that starts at ``nimg`` reads shard ``floor(nimg / images_per_shard) mod n_shards``; within
    it, this rank's rows follow the stateless shuffled scheme of :func:`prompt_indices` at position
    ``nimg - period * images_per_shard`` with a seed drawn from ``(seed, period)``. Everything is a function of
    ``(seed, nimg, batch, rank, world)``, so a resumed run replays the same rows.

    At a shard switch: a fresh merged cache is reused; otherwise every rank encodes ``rows[rank::world]``,
    ``barrier()``, rank 0 merges (the cache folder must be shared by all ranks) and deletes the parts,
    ``barrier()``, and every rank memory-maps the merged cache. Only the active shard is held.

    ``keep_old_caches=False`` lets rank 0 delete the previous shard's cache at a switch (a 1M-image run visits
    each of the 124 shards at most once, and a cache of a 1024 px shard is tens of GB); deleting a file that other
    ranks still map is safe on POSIX file systems.
    """

    def __init__(self, shards: Sequence[Path] | Path, cache_dir: Path, *, encode_prompts: Callable[[list[str]], Any],
                 encode_images: Callable[[Tensor], Tensor] | None = None, resolution: int | None = None,
                 with_images: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, encode_batch: int = 16, key: str = "",
                 caption_column: str = "llava", image_column: str = "image",
                 latent_dtype: torch.dtype = torch.float32, cond_dtype: torch.dtype | None = None,
                 make_conditioning: Callable[..., Any] | None = None, barrier: Callable[[], None] | None = None,
                 keep_old_caches: bool = True):
        self.shards = list_shards(shards) if isinstance(shards, str | os.PathLike) else [Path(s) for s in shards]
        if not self.shards:
            raise ValueError("ShardCache needs at least one shard")
        if images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside 0..{world - 1}")
        if with_images and (encode_images is None or resolution is None):
            raise ValueError("ShardCache with images needs encode_images and a resolution (or with_images=False)")
        if world > 1 and barrier is None:
            raise ValueError("ShardCache with world > 1 needs a barrier (e.g. torch.distributed.barrier)")
        self.cache_dir = Path(cache_dir)
        self.seed, self.rank, self.world = seed, rank, world
        self.images_per_shard = images_per_shard
        self.with_images = with_images
        self.make_conditioning = make_conditioning
        self.barrier = barrier or (lambda: None)
        self.keep_old_caches = keep_old_caches
        self._encode_kw: dict[str, Any] = dict(
            encode_images=encode_images, encode_prompts=encode_prompts, resolution=resolution, batch=encode_batch,
            with_images=with_images, caption_column=caption_column, image_column=image_column, key=key,
            latent_dtype=latent_dtype, cond_dtype=cond_dtype)
        self._active: tuple[int, ShardData] | None = None

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_index(self, nimg: int) -> int:
        """The shard active for the global batch that starts at image count ``nimg``."""
        return (nimg // self.images_per_shard) % self.n_shards

    def _prepare(self, index: int) -> Path:
        shard = self.shards[index]
        kw = self._encode_kw
        final = cache_path(self.cache_dir, shard, resolution=kw["resolution"], with_images=self.with_images)
        if self.world == 1:
            return encode_shard(shard, self.cache_dir, **kw)
        settings = _settings(shard, resolution=kw["resolution"], with_images=self.with_images, rank=0, world=1,
                             key=kw["key"], caption_column=kw["caption_column"], image_column=kw["image_column"],
                             latent_dtype=kw["latent_dtype"], cond_dtype=kw["cond_dtype"])
        # Every rank decides before the first barrier and nobody writes `final` before it, so all ranks agree.
        if not is_fresh(final, settings):
            encode_shard(shard, self.cache_dir, rank=self.rank, world=self.world, **kw)
            self.barrier()
            if self.rank == 0:
                parts = [cache_path(self.cache_dir, shard, resolution=kw["resolution"], with_images=self.with_images,
                                    rank=r, world=self.world) for r in range(self.world)]
                merge_caches(parts, final)
                for p in parts:
                    p.unlink(missing_ok=True)
                    _sidecar(p).unlink(missing_ok=True)
            self.barrier()
        return final

    def shard(self, index: int) -> ShardData:
        """The cache of shard ``index``, encoded if needed; the last one is kept loaded."""
        if self._active is None or self._active[0] != index:
            previous = None if self._active is None else self._active[0]
            self._active = None  # drop the old mapping before loading the next shard
            data = load_cache(self._prepare(index))
            if previous is not None and not self.keep_old_caches and self.rank == 0:
                old = cache_path(self.cache_dir, self.shards[previous], resolution=self._encode_kw["resolution"],
                                 with_images=self.with_images)
                old.unlink(missing_ok=True)
                _sidecar(old).unlink(missing_ok=True)
            if not len(data):
                raise ValueError(f"shard {self.shards[index]} has no usable rows (skipped {data.meta['skipped']} "
                                 f"with corrupt images): remove or replace it")
            self._active = (index, data)
        return self._active[1]

    def batch(self, nimg: int, batch: int, *, phase: int = 0, phases: int = 1
              ) -> tuple[Tensor | None, Any, list[str]]:
        """This rank's ``(latents, conditioning, captions)`` (``batch // world`` rows) for the global batch that
        starts at ``nimg``; latents are ``None`` for a text-only cache.

        ``phases > 1`` splits the stream between the draws of one iteration (fake phase ``phase=0``, generator
        phase ``phase=1``): position ``phases * offset + phase * batch`` within the shard's period, so the draws
        are disjoint while the shard still switches on the real image count ``nimg``."""
        if not 0 <= phase < phases:
            raise ValueError(f"phase {phase} is outside 0..{phases - 1}")
        period = nimg // self.images_per_shard
        data = self.shard(period % self.n_shards)
        offset = phases * (nimg - period * self.images_per_shard) + phase * batch
        idx = prompt_indices(len(data), seed=_period_seed(self.seed, period), nimg=offset, batch=batch,
                             rank=self.rank, world=self.world)
        return data.select(idx, self.make_conditioning)

    def batches(self, nimg: int, batch: int) -> Iterator[tuple[Tensor | None, Any, list[str]]]:
        """Successive batches from ``nimg`` on (``nimg`` grows by the global ``batch`` each time), forever."""
        while True:
            yield self.batch(nimg, batch)
            nimg += batch

    def captions(self, n: int) -> list[str]:
        """The first ``n`` captions of the first shard, read straight from the parquet file (no encoding): fixed
        prompts for sample grids."""
        out: list[str] = []
        kw = self._encode_kw
        for _, caption, _ in _iter_rows(self.shards[0], caption_column=kw["caption_column"],
                                        image_column=kw["image_column"], with_images=False):
            if len(out) >= n:
                break
            out.append(caption)
        return out

    @classmethod
    def from_adapter(cls, shards: Sequence[Path] | Path, cache_dir: Path, adapter: Any, *,
                     resolution: int | None = None, with_images: bool = True, **kwargs: Any) -> ShardCache:
        """A cache fed by a teacher adapter (``sidrepro.teachers.base.TeacherAdapter``): its VAE encodes the images
        (posterior sample, scaled and shifted), its ``encode_prompts`` the captions (empty captions get the
        empty-prompt conditioning), batches come back as ``Conditioning``; the cache key names the teacher,
        revision and dtypes. ``resolution`` defaults to the teacher's; other arguments go to ``ShardCache``."""
        from sidrepro.teachers.base import Conditioning

        entry = adapter.entry
        vae = getattr(adapter.pipe, "vae", None)
        key = (f"{entry.name}@{entry.revision} text={_dtype_name(adapter.text_dtype)} "
               f"vae={_dtype_name(getattr(vae, 'dtype', None))}")
        kwargs.setdefault("key", key)
        kwargs.setdefault("make_conditioning", Conditioning)
        return cls(shards, cache_dir, encode_prompts=adapter.encode_prompts,
                   encode_images=adapter.encode if with_images else None,
                   resolution=(resolution or entry.resolution) if with_images else None, with_images=with_images,
                   **kwargs)

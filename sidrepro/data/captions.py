"""The data-free prompt file from the captions of image-text shards (spec §7.1: the midjourney-v6-llava ``llava``
captions are the reference prompt distribution; any prompt list works as long as it excludes COCO captions).

Captions are streamed from the caption column only (the images are never read), written one per line with their
whitespace collapsed (``clean_prompt``), in shard and row order, each distinct caption once: two captions are the
same when their comparison forms (``normalize_caption``: case, whitespace, surrounding punctuation) are equal, the
rule ``load_prompts`` uses against the evaluation captions. Captions that equal an evaluation (COCO) caption are
dropped and counted, or, with ``on_overlap="refuse"``, make the whole extraction fail as ``load_prompts`` does for a
hand-made file. The file is written atomically: a failure leaves no file (and an earlier one untouched).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..atomic import write_atomic
from ..distill.prompts import clean_prompt, normalize_caption, read_lines

_BATCH_ROWS = 8192  # caption rows decoded at a time: a few MB of text
_EXAMPLES = 3


@dataclass
class PromptStats:
    """What an extraction read and wrote; ``overlap_examples`` holds a few dropped evaluation captions."""

    shards: int = 0
    rows: int = 0
    empty: int = 0
    duplicates: int = 0
    overlap: int = 0
    written: int = 0
    overlap_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.rows} captions in {self.shards} shards: {self.empty} empty, {self.duplicates} duplicates, "
                f"{self.overlap} evaluation (COCO) captions dropped; {self.written} prompts written")


def _key(text: str) -> bytes:
    # 16-byte digests instead of the strings: a million long captions would otherwise hold ~1 GB in the set.
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _forbidden_keys(exclude: Path | str | os.PathLike[str] | Iterable[str] | None) -> set[bytes]:
    if exclude is None:
        return set()
    if isinstance(exclude, str | os.PathLike):
        exclude = read_lines(Path(exclude), what="evaluation caption file")
    keys = {_key(normalize_caption(c)) for c in exclude}
    keys.discard(_key(""))
    return keys


def iter_captions(shard: Path, caption_column: str) -> Iterator[str | None]:
    """The caption column of one parquet shard, row by row (None for a null), without reading other columns.
    ``ValueError`` naming the shard, its columns and the fix when the column is missing or not text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(shard)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for damaged files
        raise ValueError(f"shard {shard} is not a readable parquet file ({err}): fetch the dataset again") from err
    names = list(pf.schema_arrow.names)
    if caption_column not in names:
        raise ValueError(f"shard {shard} has no caption column {caption_column!r}; its columns are {names}: pass "
                         f"the right one with --caption-column (midjourney-v6-llava: 'llava')")
    ctype = pf.schema_arrow.field(caption_column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)):
        raise ValueError(f"shard {shard}: column {caption_column!r} holds {ctype}, not text: pass the caption "
                         f"column with --caption-column")
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[caption_column]):
        yield from batch.column(0).to_pylist()


def _write_prompts(handle: BinaryIO, shards: Sequence[Path], caption_column: str, banned: set[bytes],
                   on_overlap: str, stats: PromptStats) -> None:
    seen: set[bytes] = set()
    for shard in shards:
        stats.shards += 1
        for caption in iter_captions(shard, caption_column):
            stats.rows += 1
            text = clean_prompt(caption or "")
            norm = normalize_caption(text)
            if not norm:
                stats.empty += 1
                continue
            key = _key(norm)
            if key in banned:
                stats.overlap += 1
                if len(stats.overlap_examples) < _EXAMPLES and text not in stats.overlap_examples:
                    stats.overlap_examples.append(text)
                continue
            if key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            handle.write(text.encode() + b"\n")
            stats.written += 1
    if stats.overlap and on_overlap == "refuse":
        examples = "; ".join(map(repr, stats.overlap_examples))
        raise ValueError(f"{stats.overlap} of {stats.rows} captions are evaluation (COCO) captions, e.g. {examples}. "
                         f"Training prompts must never come from COCO, the evaluation set: drop them "
                         f"(--on-overlap drop) or use another prompt set")
    if not stats.written:
        raise ValueError(f"no prompt left out of {stats.rows} captions in {stats.shards} shards ({stats.empty} empty, "
                         f"{stats.overlap} evaluation captions): check the caption column and the shards")


def extract_prompts(shards: Sequence[Path] | Path, out: Path, *, caption_column: str = "llava",
                    exclude: Path | str | os.PathLike[str] | Iterable[str] | None = None,
                    on_overlap: str = "drop") -> PromptStats:
    """Write the prompt file ``out`` (UTF-8, one prompt per line) from the captions of ``shards`` (parquet files, or
    a folder of ``train_*.parquet``) and return the counts.

    ``exclude`` holds the evaluation captions (a ``.txt`` file, one per line, e.g. the COCO reference's
    ``captions.txt``, or a collection of captions); ``on_overlap`` is ``"drop"`` (skip and count them) or
    ``"refuse"`` (``ValueError``, no file written). Raises ``ValueError`` naming the shard or file, the problem and
    the fix for a missing caption column, an unreadable shard or an empty result.
    """
    from ..distill.shards import list_shards

    if on_overlap not in ("drop", "refuse"):
        raise ValueError(f"on_overlap must be 'drop' or 'refuse', got {on_overlap!r}")
    if isinstance(shards, str | os.PathLike):
        files = [Path(shards)] if Path(shards).is_file() else list_shards(Path(shards))
    else:
        files = [Path(s) for s in shards]
    banned = _forbidden_keys(exclude)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = PromptStats()
    write_atomic(out, lambda handle: _write_prompts(handle, files, caption_column, banned, on_overlap, stats))
    return stats

"""The image-text dataset as a pinned hub snapshot: ``brivangl/midjourney-v6-llava`` (spec §6.4), parquet shards
``data/train_000.parquet`` ... ``data/train_123.parquet`` with a caption column ``llava`` and an image column
``image`` (encoded bytes).

``fetch_dataset`` goes through ``sidrepro.teachers.hub.fetch_snapshot`` with ``repo_type="dataset"``: the commit is
pinned in the lock file (key ``datasets/owner/name``), sizes are checked and the folder is renamed into place only
when complete. It then reads every shard's parquet footer (not the data) and refuses a snapshot whose shards lack the
expected columns, so that a wrong repo or revision fails here and not hours into training.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..teachers.hub import HubError, Snapshot, fetch_snapshot, repo_page
from . import CAPTION_COLUMN, DEFAULT_DATASET, DEFAULT_FILES, IMAGE_COLUMN

__all__ = ["CAPTION_COLUMN", "DEFAULT_DATASET", "DEFAULT_FILES", "IMAGE_COLUMN", "DatasetLayoutError",
           "DatasetSnapshot", "check_columns", "fetch_dataset", "shards_dir"]


class DatasetLayoutError(HubError):
    """The snapshot arrived whole but its shards are not the expected parquet layout (columns, types)."""


@dataclass(frozen=True)
class DatasetSnapshot:
    """A fetched dataset: the hub ``snapshot`` and its parquet ``shards`` (natural order) in ``shards_dir``."""

    snapshot: Snapshot
    shards_dir: Path
    shards: tuple[Path, ...]

    def describe(self) -> dict[str, Any]:
        """The stamp the workflow keeps: repo, commit and shard count (what a run was trained on)."""
        return {"repo_id": self.snapshot.repo_id, "repo_type": "dataset", "commit": self.snapshot.commit,
                "path": str(self.snapshot.path), "shards_dir": str(self.shards_dir), "shards": len(self.shards),
                "files": len(self.snapshot.files)}


def shards_dir(dest: Path, files: str = DEFAULT_FILES) -> Path:
    """The folder of the shards in a snapshot at ``dest``: the directory part of the ``files`` glob."""
    return Path(dest) / posixpath.dirname(files)


def check_columns(shards: Sequence[Path], *, repo_id: str, caption_column: str = CAPTION_COLUMN,
                  image_column: str | None = IMAGE_COLUMN) -> None:
    """Raise ``DatasetLayoutError`` (problem and fix) unless every shard has a string ``caption_column`` and, when
    given, an ``image_column`` of encoded bytes. Reads parquet footers only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fix_columns = ("Set the column names (--caption-column / --image-column, or caption_column in the config) to "
                   f"those of the dataset, or fetch the right repo or revision (see {repo_page(repo_id, 'dataset')}).")
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for damaged files
            raise DatasetLayoutError(f"{shard} of {repo_id} is not a readable parquet file ({err}).",
                                     "Delete the snapshot folder and fetch it again.", repo_id=repo_id) from None
        wanted = [c for c in (caption_column, image_column) if c]
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise DatasetLayoutError(
                f"The shards of {repo_id} have no column {', '.join(map(repr, missing))} ({shard.name} has "
                f"{list(schema.names)}).", fix_columns, repo_id=repo_id)
        ctype = schema.field(caption_column).type
        if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)):
            raise DatasetLayoutError(f"Caption column {caption_column!r} of {repo_id} ({shard.name}) holds {ctype}, "
                                     f"not text.", fix_columns, repo_id=repo_id)
        if image_column:
            itype = schema.field(image_column).type
            if not (pa.types.is_binary(itype) or pa.types.is_large_binary(itype)
                    or (pa.types.is_struct(itype) and itype.get_field_index("bytes") >= 0)):
                raise DatasetLayoutError(f"Image column {image_column!r} of {repo_id} ({shard.name}) holds {itype}, "
                                         f"not encoded image bytes.", fix_columns, repo_id=repo_id)


def fetch_dataset(repo_id: str, revision: str, dest: Path, *, files: str = DEFAULT_FILES,
                  caption_column: str = CAPTION_COLUMN, image_column: str | None = IMAGE_COLUMN,
                  lock_file: Path | None = None, update_lock: bool = False, token: str | bool | None = None,
                  endpoint: str | None = None, stamp: Path | None = None) -> DatasetSnapshot:
    """Make ``dest`` a complete snapshot of the dataset repo ``repo_id`` at ``revision`` (only the files matching
    the ``files`` glob) and check its shards' columns; with ``stamp``, write ``DatasetSnapshot.describe()`` there
    (atomically). The lock file, offline reuse and errors are those of ``fetch_snapshot``; a shard layout that
    does not fit raises ``DatasetLayoutError``."""
    from ..distill.shards import list_shards

    snap = fetch_snapshot(repo_id, revision, dest, allow_patterns=[files], lock_file=lock_file,
                          update_lock=update_lock, token=token, endpoint=endpoint, repo_type="dataset")
    folder = shards_dir(snap.path, files)
    shards = tuple(list_shards(folder, posixpath.basename(files)))
    check_columns(shards, repo_id=repo_id, caption_column=caption_column, image_column=image_column)
    result = DatasetSnapshot(snap, folder, shards)
    if stamp is not None:
        Path(stamp).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(stamp), result.describe())
    return result

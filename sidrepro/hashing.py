"""Content hashes of files, read in blocks (checkpoints, shards and reference sets are gigabytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 22


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()

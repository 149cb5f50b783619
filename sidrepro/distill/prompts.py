"""Prompts for the data-free setting: a checked prompt file and a stateless, resumable sampler.

Prompts come from a plain text file, one per line (spec §7.1). They must never be COCO captions, the evaluation set
(eval_protocol.md), so :func:`load_prompts` can refuse a file that shares any caption with the evaluation captions.

The sampler is a pure function of ``(seed, nimg, rank, world)``: global image position ``p`` falls in epoch
``p // n`` at offset ``p % n`` of that epoch's seeded permutation. Resuming at a saved ``nimg`` therefore replays
exactly the prompts an uninterrupted run would have drawn, with no sampler state in the checkpoint. The official
code uses EDM's ``InfiniteSampler`` (window shuffle 0.5); plain shuffled epochs are simpler to reason about and give
every prompt exactly once per epoch.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

__all__ = [
    "PromptSampler",
    "clean_prompt",
    "find_overlap",
    "load_prompts",
    "normalize_caption",
    "prompt_indices",
    "read_lines",
]

_SPACES = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """The form in which prompts and evaluation captions are compared: lower case, runs of whitespace collapsed to
    one space, punctuation and whitespace stripped from both ends ("A dog on a bench." == "a  dog on a bench")."""
    text = _SPACES.sub(" ", text.lower())
    start, end = 0, len(text)
    # Unicode categories, not string.punctuation: captions carry curly quotes, ellipses and full-width stops.
    while start < end and (text[start].isspace() or unicodedata.category(text[start]).startswith("P")):
        start += 1
    while end > start and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[start:end]


def clean_prompt(text: str) -> str:
    """A caption as one line of a prompt file: runs of whitespace (newlines included) collapsed to one space, ends
    stripped. Case and punctuation stay: the text encoders see them (only the comparison form drops them)."""
    return _SPACES.sub(" ", text).strip()


def read_lines(path: Path, *, what: str = "prompt file") -> list[str]:
    """The non-blank lines of a UTF-8 ``.txt`` file, each stripped. ``ValueError`` naming the file, the problem
    and the fix when it is missing, not ``.txt``, not UTF-8 or holds no line."""
    path = Path(path)
    if path.suffix.lower() != ".txt":
        raise ValueError(f"{what} {path}: expected a .txt file with one entry per line, got {path.suffix or 'no'} "
                         f"suffix; convert it to plain text (UTF-8, one entry per line) and name it *.txt")
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist: create it (UTF-8, one entry per line) or point the config "
                         f"at the file that holds them")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} is not valid UTF-8 (line {line}): re-save it as UTF-8") from err
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{what} {path} is empty (no non-blank line): put one entry per line in it")
    return lines


def find_overlap(prompts: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """The prompts that equal a forbidden caption after :func:`normalize_caption`, in prompt order (with
    repeats)."""
    banned = {normalize_caption(c) for c in forbidden}
    banned.discard("")
    return [p for p in prompts if normalize_caption(p) in banned]


def load_prompts(path: Path, *, forbidden: Path | str | os.PathLike[str] | Iterable[str] | None = None) -> list[str]:
    """The prompts of a UTF-8 ``.txt`` file, one per line, stripped, blank lines dropped (duplicates are kept:
    they weight the prompt distribution as the file says).

    ``forbidden`` holds the evaluation captions (COCO): a ``.txt`` file with one caption per line (a ``str`` is
    taken as a path, never as one caption) or a collection of captions. A prompt that matches one of them after
    normalisation (lower case, collapsed whitespace, surrounding punctuation stripped) makes the whole file
    refused: training on evaluation captions would leak the test set into the student.

    Raises ``ValueError`` naming the file, the problem and the fix: missing file, no prompts, overlap.
    """
    path = Path(path)
    prompts = read_lines(path, what="prompt file")
    if forbidden is None:
        return prompts
    if isinstance(forbidden, str | os.PathLike):
        captions: Iterable[str] = read_lines(Path(forbidden), what="evaluation caption file")
        source = f" in {forbidden}"
    else:
        captions, source = forbidden, ""
    overlap = find_overlap(prompts, captions)
    if overlap:
        examples = "; ".join(repr(p) for p in list(dict.fromkeys(overlap))[:3])
        raise ValueError(f"prompt file {path}: {len(overlap)} of {len(prompts)} prompts are evaluation (COCO) "
                         f"captions{source}, e.g. {examples}. Training prompts must never come from COCO, the "
                         f"evaluation set: remove these lines from {path.name} (or use another prompt set)")
    return prompts


def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash, not seed * k + epoch: distinct (seed, epoch) pairs never share a stream.
    digest = hashlib.sha256(f"sidrepro-sampler:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # A batch touches at most a couple of epochs, so a small cache spares re-drawing a permutation of n every step.
    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(n, generator=gen)


def prompt_indices(n_prompts: int, *, seed: int, nimg: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The prompt indices that rank ``rank`` uses for the global batch that starts at image count ``nimg``.

    The global batch covers positions ``nimg .. nimg + batch - 1`` of an infinite stream of shuffled epochs
    (position ``p`` -> ``perm(seed, p // n)[p % n]``, one seeded ``torch.randperm`` per epoch); rank ``r`` takes the
    contiguous slice ``[r * batch // world, (r + 1) * batch // world)``. The result depends on nothing else, so a
    resumed run replays the same prompts, and ``world`` ranks together draw what one rank would.
    """
    if n_prompts < 1:
        raise ValueError(f"prompt_indices needs at least one prompt, got n_prompts={n_prompts}")
    if nimg < 0:
        raise ValueError(f"nimg must be >= 0, got {nimg}")
    if batch < 1 or world < 1:
        raise ValueError(f"batch and world must be >= 1, got batch={batch}, world={world}")
    if batch % world:
        raise ValueError(f"global batch {batch} is not divisible by world size {world}: choose a batch that is a "
                         f"multiple of the number of ranks")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    share = batch // world
    start = nimg + rank * share
    out: list[int] = []
    pos = start
    while pos < start + share:
        epoch, offset = divmod(pos, n_prompts)
        take = min(start + share - pos, n_prompts - offset)
        out.extend(_permutation(n_prompts, seed, epoch)[offset:offset + take].tolist())
        pos += take
    return out


class PromptSampler:
    """A prompt list with its seed and this rank's place: ``batch(nimg, batch)`` gives this rank's prompts for
    the global batch starting at ``nimg`` (see :func:`prompt_indices`)."""

    def __init__(self, prompts: Sequence[str], *, seed: int, rank: int = 0, world: int = 1):
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside 0..{world - 1}")
        self.prompts = list(prompts)
        self.seed, self.rank, self.world = seed, rank, world

    def __len__(self) -> int:
        return len(self.prompts)

    def indices(self, nimg: int, batch: int) -> list[int]:
        """This rank's prompt indices for the global batch of size ``batch`` that starts at ``nimg``."""
        return prompt_indices(len(self.prompts), seed=self.seed, nimg=nimg, batch=batch, rank=self.rank,
                              world=self.world)

    def batch(self, nimg: int, batch: int, *, phase: int = 0, phases: int = 1) -> list[str]:
        """This rank's prompts (``batch // world`` of them) for the global batch that starts at ``nimg``.

        ``phases > 1`` splits the stream between the draws of one iteration (fake phase ``phase=0``, generator
        phase ``phase=1``): stream position ``phases * nimg + phase * batch``, so the draws never repeat a
        position."""
        if not 0 <= phase < phases:
            raise ValueError(f"phase {phase} is outside 0..{phases - 1}")
        return [self.prompts[i] for i in self.indices(phases * nimg + phase * batch, batch)]

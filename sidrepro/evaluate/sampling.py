"""Sharded, resumable, reproducible sampling of students, teachers and baselines on a caption list (the images that
FID and CLIP score read; eval protocol: PNG, uint8 by ``x * 127.5 + 128``, Lanczos-resized to 256 px).

Layout of an output folder::

    out_dir/plan.json                              what the folder holds: model record, seed, shards, prompt ids
    out_dir/{prompt_id:06d}.png                    one image per caption row
    out_dir/manifest-{shard:03d}-of-{n:03d}.jsonl  one row per finished image, appended after its PNG is in place
    out_dir/manifest.jsonl                         all rows sorted by prompt id (``merge_manifests``)

Decisions that the rest of the project relies on:

- Shard assignment is strided: shard ``k`` of ``n`` takes ``captions[k::n]`` (positions in the list as given), so
  every shard gets a similar mix of captions and the same amount of work.
- Seeds: the image of prompt id ``p`` uses its own CPU ``torch.Generator`` seeded with
  ``image_seed(seed, p) = seed * 2**32 + p`` for its initial latent and every fresh noise it needs (the SiD
  sampler's per-step noise too, see ``sid_sample``; with ``seed=0`` the image seed is the prompt id). Drawing on the
  CPU gives the same latents on every device. Nothing random is shared between images.
- Bit-exactness: float kernels (GEMM, convolutions) choose their blocking by tensor shape, so an image's pixels can
  move by one uint8 level when the forward-pass shape changes, even with identical random draws. Every forward
  therefore runs at exactly ``batch`` rows (a short last batch is padded with copies of its last row; text encoders
  see every row even when a caption is empty). Then sharding, resuming, which images share a batch, and
  regenerating one image alone (``sampler([caption], [image_seed(seed, p)], pad_to=batch)``) give byte-identical
  PNGs on one device / dtype / library stack (tested). A different ``batch`` may move a few pixels by one level
  (tested bound); every manifest row records its ``batch`` and ``device``.
- The model hash (``model_hash``) is a sha256 over the files that define the sampled network: ``transformer/``
  (plus ``sidrepro_student.json`` for a student and the LoRA folder for a LoRA baseline). Each file contributes its
  relative path and size, then its whole content if it is at most 64 MiB, else its first and last MiB (reading
  tens of GB of FLUX weights per shard would cost minutes; safetensors headers sit at the start and any retrained
  weights change the first MiB). VAE and text encoders are pinned by the revision instead.
- A shard is resumable: a row is appended (and flushed) only after its PNG has been renamed into place, so after a
  kill, images with a PNG whose sha256 matches its manifest row are skipped and everything else is regenerated
  (a torn last manifest line is cut off). A folder belongs to one plan: a different model, seed, shard count,
  output resolution or caption list is refused rather than mixed in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_bytes_atomic

__all__ = ["KINDS", "IncompleteSamplesError", "ModelRecord", "ModelSpec", "Sampler", "image_seed", "load_sampler",
           "manifest_name", "merge_manifests", "model_hash", "sample_shard", "shard_rows", "sid_sample", "to_png",
           "to_uint8"]

log = logging.getLogger(__name__)

KINDS = ("student", "teacher", "baseline")
FORMAT = 1
PLAN_FILE = "plan.json"
MERGED_FILE = "manifest.jsonl"
HASH_FULL_LIMIT = 64 * 2**20  # files up to this size are hashed whole
HASH_CHUNK = 2**20  # larger files: path, size, first and last MiB
_WEIGHT_SKIP = {".cache"}

Caption = tuple[int, int, str]  # (prompt_id, image_id, caption)


# --- what to sample ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """What to sample. ``student``: an exported student folder, sampled with the SiD few-step sampler (no CFG, its
    own num_steps / noise / init_timestep; ``steps`` may stop early on its grid). ``teacher``: a registry teacher
    ``name`` and its snapshot ``folder``, sampled with the family's own sampler at the registry's steps and guidance
    unless ``steps`` / ``guidance`` override them. ``baseline``: a registry baseline ``name``, its base snapshot
    ``folder`` and its ``lora`` folder if it has one, sampled through its diffusers pipeline. ``resolution`` is the
    generation resolution (default: the model's); images are resized to the output resolution afterwards."""

    kind: str
    folder: Path
    name: str = ""
    lora: Path | None = None
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind != "student" and not self.name:
            raise ValueError(f"a {self.kind} needs its registry name")
        if self.kind == "student" and self.guidance is not None:
            raise ValueError("students sample without guidance (the eval protocol); drop guidance")
        if self.kind != "baseline" and self.lora is not None:
            raise ValueError("only baselines take a LoRA folder")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        object.__setattr__(self, "folder", Path(self.folder))
        if self.lora is not None:
            object.__setattr__(self, "lora", Path(self.lora))

    @classmethod
    def student(cls, folder: str | Path, *, steps: int | None = None, resolution: int | None = None) -> ModelSpec:
        """An exported student (``sidrepro.distill.export.export_student``)."""
        return cls("student", Path(folder), steps=steps, resolution=resolution)

    @classmethod
    def teacher(cls, name: str, folder: str | Path, *, steps: int | None = None, guidance: float | None = None,
                resolution: int | None = None) -> ModelSpec:
        """A registry teacher and its snapshot folder."""
        return cls("teacher", Path(folder), name, steps=steps, guidance=guidance, resolution=resolution)

    @classmethod
    def baseline(cls, name: str, base: str | Path, lora: str | Path | None = None, *, steps: int | None = None,
                 guidance: float | None = None, resolution: int | None = None) -> ModelSpec:
        """A registry baseline, its base snapshot and (LoRA baselines) its adapter folder."""
        return cls("baseline", Path(base), name, None if lora is None else Path(lora), steps, guidance, resolution)


@dataclass(frozen=True)
class ModelRecord:
    """What a sample folder records about its model (plan.json and every manifest row). ``guidance`` is ``None``
    for students (no CFG; FLUX students get guidance embedding 1)."""

    kind: str
    name: str
    model_hash: str
    revision: str
    steps: int
    guidance: float | None
    resolution: int
    dtype: str


def _weight_files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    return [(f"{prefix}{p.relative_to(folder).as_posix()}", p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not (_WEIGHT_SKIP & set(p.relative_to(folder).parts))]


def model_hash(files: Iterable[tuple[str, Path]]) -> str:
    """``sha256:<hex>`` over ``(name, path)`` pairs in name order: each name and size, then the content of files up
    to 64 MiB, or the first and last MiB of larger ones (cheap enough to run per shard on multi-GB weights)."""
    h = hashlib.sha256()
    for name, path in sorted(files):
        size = path.stat().st_size
        h.update(f"{name}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if size <= HASH_FULL_LIMIT:
                h.update(fh.read())
            else:
                h.update(fh.read(HASH_CHUNK))
                fh.seek(size - HASH_CHUNK)
                h.update(fh.read(HASH_CHUNK))
    return f"sha256:{h.hexdigest()}"


def _hashed_files(spec: ModelSpec) -> list[tuple[str, Path]]:
    files = _weight_files(spec.folder / "transformer", "transformer/")
    if spec.kind == "student":
        from ..teachers.student import STUDENT_FILE

        files.append((STUDENT_FILE, spec.folder / STUDENT_FILE))
    if spec.lora is not None:
        files += _weight_files(spec.lora, "lora/")
    if not files:
        raise FileNotFoundError(f"no transformer weights under {spec.folder / 'transformer'}")
    return files


def _snapshot_revision(folder: Path, fallback: str) -> str:
    """The pinned commit of a fetched snapshot, ``zoo:seed=N`` for a tiny zoo model, else the registry revision."""
    from ..teachers.hub import read_marker

    marker = read_marker(folder)
    if marker:
        return str(marker["commit"])
    try:
        return f"zoo:seed={json.loads((folder / 'zoo.json').read_text())['seed']}"
    except (OSError, ValueError, KeyError):
        return fallback


# --- samplers ------------------------------------------------------------------------------------------------------

def image_seed(seed: int, prompt_id: int) -> int:
    """The seed of the image of ``prompt_id`` in a run with base ``seed``: ``seed * 2**32 + prompt_id``."""
    if not 0 <= prompt_id < 2**32 or not 0 <= seed < 2**31:
        raise ValueError(f"need 0 <= prompt_id < 2**32 and 0 <= seed < 2**31, got {prompt_id}, {seed}")
    return seed * 2**32 + prompt_id


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    # CPU generators: the same latents on every device.
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _per_image_normal(gens: Sequence[torch.Generator], shape: Sequence[int]) -> Tensor:
    """One standard normal draw of ``shape`` per generator, ``(B, *shape)`` fp32 on the CPU."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 by ``x * 127.5 + 128`` clamped (the eval protocol), on the CPU."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()


@torch.no_grad()
def sid_sample(velocity_fn, z: Tensor, gens: Sequence[torch.Generator], steps: int, *, num_steps: int = 4,
               init_timestep: int = 999, noise: str = "fresh") -> Tensor:
    """``sidrepro.sid.sampler.generate`` with per-image fresh noise: image ``b`` draws its noise from ``gens[b]``,
    so results do not depend on which images share a batch. With one image and its generator it draws exactly what
    ``generate`` draws (fp32). Times are fp32 whatever ``z``'s dtype, as in training."""
    from ..flow import x0_from_velocity
    from ..sid.sampler import batch_time, check_noise, step_times

    times = step_times(num_steps, init_timestep)
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in [1, num_steps={num_steps}], got {steps}")
    check_noise(noise)
    x0 = torch.zeros_like(z)
    x_prev = t_prev = None
    for i, t_i in enumerate(times[:steps]):
        if i == 0 or noise == "fixed":
            n = z
        elif noise == "fresh":
            n = _per_image_normal(gens, z.shape[1:]).to(z.device, z.dtype)
        else:  # ddim: the noise implied by the previous input and the current x0 estimate
            n = (x_prev - (1 - t_prev) * x0) / t_prev
        x_t = (1 - t_i) * x0 + t_i * n
        t = batch_time(t_i, z)
        x0 = x0_from_velocity(x_t, velocity_fn(x_t, t), t)
        x_prev, t_prev = x_t, t_i
    return x0


def _encode_fixed_shape(adapter, prompts: list[str]):
    """``adapter.encode_prompts`` with the text encoder always run on ``len(prompts)`` rows. The adapter encodes only
    the non-empty prompts of a batch, so an empty caption would shrink the encoder's batch and move the other rows'
    embeddings by float rounding; here the non-empty ones are padded back to full size first."""
    from ..teachers.base import Conditioning

    keep = [i for i, p in enumerate(prompts) if p.strip()]
    if len(keep) in (0, len(prompts)):
        return adapter.encode_prompts(prompts)
    texts = [prompts[i] for i in keep]
    enc = adapter.encode_prompts(texts + texts[-1:] * (len(prompts) - len(keep)))
    empty = adapter.empty(len(prompts))
    rows = {j: enc[n:n + 1] for n, j in enumerate(keep)}
    return Conditioning.cat([rows.get(i, empty[i:i + 1]) for i in range(len(prompts))])


class Sampler:
    """A loaded model: ``sampler(prompts, seeds, pad_to=B)`` -> uint8 images ``(len(prompts), 3, H, W)`` at the
    generation resolution, image ``b`` drawn from its own generator seeded with ``seeds[b]``. ``record`` says what
    was loaded, ``device`` where it runs."""

    record: ModelRecord
    device: torch.device

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], *, pad_to: int | None = None) -> Tensor:
        """Sample; with ``pad_to`` a shorter batch is padded with copies of its last row, so every forward pass has
        the same shape (kernels pick their reduction order by shape, so rows are then bit-stable whatever else
        shares the batch)."""
        prompts, seeds = list(prompts), list(seeds)
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"need as many seeds as prompts (and at least one), got {len(prompts)}, {len(seeds)}")
        n = len(prompts)
        pad = max(0, (pad_to or n) - n)
        return self._sample(prompts + prompts[-1:] * pad, seeds + seeds[-1:] * pad)[:n]

    def _sample(self, prompts: list[str], seeds: list[int]) -> Tensor:
        raise NotImplementedError


class _StudentSampler(Sampler):
    def __init__(self, spec: ModelSpec, device: torch.device | str, dtype: torch.dtype):
        from ..teachers.student import load_student

        self.adapter, self.net, self.meta = load_student(spec.folder, device=device, dtype=dtype)
        self.dtype, self.device = dtype, self.adapter.device
        self.num_steps = int(self.meta["num_steps"])
        self.steps = spec.steps or self.num_steps
        if spec.resolution and spec.resolution != int(self.meta["resolution"]):
            raise ValueError(f"the student was trained at {self.meta['resolution']} px; generate there and let "
                             f"resolution_out resize (got resolution={spec.resolution})")
        if not 1 <= self.steps <= self.num_steps:
            raise ValueError(f"a {self.num_steps}-step student samples 1..{self.num_steps} steps, got {self.steps}")
        self.record = ModelRecord("student", f"student-of-{self.meta['teacher']}", model_hash(_hashed_files(spec)),
                                  Path(str(self.meta["checkpoint"])).name, self.steps, None,
                                  int(self.meta["resolution"]), str(dtype).removeprefix("torch."))

    def _sample(self, prompts: list[str], seeds: list[int]) -> Tensor:
        gens = _generators(seeds)
        # Latents stay fp32 (the adapter casts them for the network), so the sampler's arithmetic is training's.
        z = _per_image_normal(gens, self.adapter.latent_shape()).to(self.adapter.device)
        velocity = self.adapter.bind(self.net, _encode_fixed_shape(self.adapter, prompts)).velocity
        x = sid_sample(velocity, z, gens, self.steps, num_steps=self.num_steps,
                       init_timestep=int(self.meta["init_timestep"]), noise=str(self.meta["noise"]))
        return to_uint8(self.adapter.decode(x))


class _TeacherSampler(Sampler):
    def __init__(self, spec: ModelSpec, device: torch.device | str, dtype: torch.dtype):
        from ..teachers.load import load_teacher
        from ..teachers.registry import get_teacher

        entry = get_teacher(spec.name)
        self.adapter = load_teacher(entry, spec.folder, device=device, dtype=dtype)
        self.net = self.adapter.load_transformer().eval().requires_grad_(False)
        self.device = self.adapter.device
        self.steps = spec.steps or entry.sample_steps
        self.guidance = entry.sample_guidance if spec.guidance is None else float(spec.guidance)
        self.resolution = spec.resolution or entry.resolution
        self.adapter.latent_shape(self.resolution)  # refuse a bad resolution before any work
        self.record = ModelRecord("teacher", entry.name, model_hash(_hashed_files(spec)),
                                  _snapshot_revision(spec.folder, entry.revision), self.steps, self.guidance,
                                  self.resolution, str(dtype).removeprefix("torch."))

    def _sample(self, prompts: list[str], seeds: list[int]) -> Tensor:
        noise = _per_image_normal(_generators(seeds), self.adapter.latent_shape(self.resolution))
        x = self.adapter.sample(self.net, _encode_fixed_shape(self.adapter, prompts), steps=self.steps,
                                guidance=self.guidance, noise=noise.to(self.adapter.device))
        return to_uint8(self.adapter.decode(x))


class _BaselineSampler(Sampler):
    def __init__(self, spec: ModelSpec, device: torch.device | str, dtype: torch.dtype):
        from ..teachers.baselines import load_baseline
        from ..teachers.registry import get_baseline

        entry = get_baseline(spec.name)
        if spec.steps is not None or spec.guidance is not None:
            entry = replace(entry, steps=spec.steps or entry.steps,
                            guidance=entry.guidance if spec.guidance is None else float(spec.guidance))
        self.entry = entry
        self.pipe = load_baseline(entry, spec.folder, spec.lora, device=device, dtype=dtype)
        self.device = torch.device(device)
        self.resolution = spec.resolution or entry.resolution
        revision = _snapshot_revision(spec.folder, entry.revision)
        if spec.lora is not None:
            revision += "+" + _snapshot_revision(spec.lora, entry.lora_revision)
        self.record = ModelRecord("baseline", entry.name, model_hash(_hashed_files(spec)), revision, entry.steps,
                                  entry.guidance, self.resolution, str(dtype).removeprefix("torch."))

    def _sample(self, prompts: list[str], seeds: list[int]) -> Tensor:
        from ..teachers.baselines import sample_baseline

        # A list of generators makes the pipeline draw each image's latent (and SANA-Sprint's step noise) from its
        # own generator.
        images = sample_baseline(self.pipe, self.entry, prompts, generator=_generators(seeds),
                                 resolution=self.resolution)
        return to_uint8(images.float() * 2 - 1)  # the pipeline returns [0, 1]; one uint8 mapping for every row


def load_sampler(spec: ModelSpec, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                 ) -> Sampler:
    """Load ``spec`` once; the result can be handed to ``sample_shard`` for several shards or folders."""
    cls = {"student": _StudentSampler, "teacher": _TeacherSampler, "baseline": _BaselineSampler}[spec.kind]
    return cls(spec, device, dtype)


# --- files ---------------------------------------------------------------------------------------------------------

def to_png(image: Tensor, resolution_out: int) -> bytes:
    """A uint8 image ``(3, H, W)`` as PNG bytes, PIL-Lanczos-resized to ``resolution_out`` square (eval protocol)."""
    from PIL import Image

    im = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    if im.size != (resolution_out, resolution_out):
        im = im.resize((resolution_out, resolution_out), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def manifest_name(shard: int, num_shards: int) -> str:
    """The file name of a shard's manifest."""
    return f"manifest-{shard:03d}-of-{num_shards:03d}.jsonl"


def shard_rows(captions: Sequence[Caption], shard: int, num_shards: int) -> list[Caption]:
    """The rows of shard ``shard`` of ``num_shards``: ``captions[shard::num_shards]`` (strided)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    return list(captions[shard::num_shards])


def _check_captions(captions: Sequence[Caption]) -> list[Caption]:
    rows = [(int(p), int(i), str(c)) for p, i, c in captions]
    if not rows:
        raise ValueError("no captions to sample")
    ids = [p for p, _, _ in rows]
    if len(set(ids)) != len(ids):
        dup = sorted(p for p, n in Counter(ids).items() if n > 1)
        raise ValueError(f"prompt ids must be unique; repeated: {_ids(dup)}")
    if min(ids) < 0 or max(ids) >= 2**32:
        raise ValueError("prompt ids must be in [0, 2**32)")
    return rows


def _captions_sha256(rows: Sequence[Caption]) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock beside ``out_dir``, held by one shard at a time while it checks or replaces the plan."""
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _plan(out_dir: Path, rows: list[Caption], num_shards: int, seed: int, record: ModelRecord,
          resolution_out: int, source: dict[str, str] | None = None, *, on_change: str = "error") -> dict[str, Any]:
    """Write ``plan.json`` if the folder has none (atomically, first writer wins), else check that it matches.

    ``source`` (the model's folders) is recorded for provenance but not compared: the model hash identifies the
    model, and a moved or re-pulled folder must not orphan finished samples. A folder of another plan is refused
    (``on_change="error"``) or, with ``"restart"`` (a retrained model in the workflow), moved whole to
    ``.superseded/`` beside it, under a lock so that the shards of one model move it once."""
    plan = {"format": FORMAT, "num_shards": num_shards, "seed": seed, "resolution_out": resolution_out,
            "model": asdict(record), "num_images": len(rows), "captions_sha256": _captions_sha256(rows),
            "prompt_ids": [p for p, _, _ in rows], "source": source or {}}
    if on_change not in ("error", "restart"):
        raise ValueError(f"on_plan_change must be 'error' or 'restart', got {on_change!r}")
    if on_change == "error":
        return _write_or_check_plan(out_dir, plan)
    with _folder_lock(out_dir):
        try:
            return _write_or_check_plan(out_dir, plan)
        except PlanMismatchError as exc:
            dest = out_dir.parent / ".superseded" / f"{out_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}"
            dest.parent.mkdir(exist_ok=True)
            out_dir.rename(dest)
            out_dir.mkdir()
            log.warning("%s; the old samples moved to %s", exc, dest)
            return _write_or_check_plan(out_dir, plan)


class PlanMismatchError(ValueError):
    """A sample folder holds the samples of another plan (model, seed, captions, shards or size)."""


def _write_or_check_plan(out_dir: Path, plan: dict[str, Any]) -> dict[str, Any]:
    path = out_dir / PLAN_FILE
    if not path.exists():
        tmp = path.with_name(f".{PLAN_FILE}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(plan))
        try:
            os.link(tmp, path)  # fails if another shard got there first; then compare with its plan
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    old = json.loads(path.read_text())
    differ = [k for k in plan if k not in ("prompt_ids", "source") and old.get(k) != plan[k]]
    if differ:
        detail = "; ".join(f"{k}: folder has {old.get(k)!r}, this run {plan[k]!r}" for k in differ
                           if k != "captions_sha256")
        raise PlanMismatchError(f"{out_dir} holds samples of another plan ({', '.join(differ)} differ"
                                f"{': ' if detail else ''}{detail}); use a fresh output folder or the same settings, "
                                "or --on-plan-change restart to move the old samples aside")
    return old


def _read_rows(path: Path, *, repair: bool) -> list[dict[str, Any]]:
    """Manifest rows; a torn last line (a kill mid-write) is dropped, and cut from the file when ``repair``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows, good = [], 0
    for n, line in enumerate(lines):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            row = json.loads(line)
            if n == len(lines) - 1:
                raise ValueError("no newline")  # the last row was not finished
        except ValueError:
            if n < len(lines) - 1:
                raise ValueError(f"{path}: line {n + 1} is not JSON; the manifest is corrupt") from None
            break
        rows.append(row)
        good += len(line) + 1
    if repair and good < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return rows


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _resume(manifest: Path, out_dir: Path, rows: list[Caption], expect: dict[str, Any]) -> set[int]:
    """Prompt ids of this shard that are done: a manifest row that fits the run and a PNG with its sha256. Rows that
    fail are removed from the manifest (their images are regenerated)."""
    mine = {p: (i, c) for p, i, c in rows}
    keep, done = [], set()
    found = _read_rows(manifest, repair=True)
    for row in found:
        p = row.get("prompt_id")
        if p not in mine or (row.get("image_id"), row.get("caption")) != mine[p]:
            raise ValueError(f"{manifest} lists prompt id {p!r} with another image id or caption than this run's "
                             f"shard; use a fresh output folder")
        bad = {k: row.get(k) for k, v in expect.items() if row.get(k) != v}
        if bad:
            raise ValueError(f"{manifest}: prompt id {p} was sampled with {bad}, this run uses "
                             f"{ {k: expect[k] for k in bad} }; use a fresh output folder")
        png = out_dir / row["file"]
        if p in done or not png.exists() or _sha256(png.read_bytes()) != row.get("sha256"):
            continue
        keep.append(row)
        done.add(p)
    if len(keep) != len(found):
        log.info("%s: %d manifest rows dropped (duplicate or missing/changed PNG); regenerating",
                 manifest, len(found) - len(keep))
        write_bytes_atomic(manifest, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in keep))
    return done


def sample_shard(spec: ModelSpec | Sampler, captions: Sequence[Caption], out_dir: str | Path, *, shard: int = 0,
                 num_shards: int = 1, seed: int = 0, batch: int = 8, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, resolution_out: int = 256, progress: bool = True,
                 limit: int | None = None, on_plan_change: str = "error",
                 should_stop: Callable[[float], str] | None = None) -> Path:
    """Sample shard ``shard`` of ``num_shards`` of ``captions`` (``(prompt_id, image_id, caption)`` rows; the shard
    takes ``captions[shard::num_shards]``) into ``out_dir`` and return its manifest path.

    Each image is saved as ``{prompt_id:06d}.png`` (uint8 by ``x * 127.5 + 128``, Lanczos-resized to
    ``resolution_out``), then its manifest row is appended. Images already done (PNG and matching row) are skipped,
    so rerunning after a kill finishes the shard. ``spec`` may be a loaded ``Sampler`` (``device``/``dtype`` are
    then ignored). ``limit`` stops after that many new images (time-boxed jobs, tests). ``on_plan_change``: what to
    do with a folder that holds another plan's samples (see ``_plan``). ``should_stop(seconds_per_batch)`` is asked
    before every batch; a non-empty answer (its reason, e.g. the job's time limit is near) ends the call there, with
    every finished image kept, for a later call to complete the shard."""
    from tqdm.auto import tqdm

    if num_shards < 1 or batch < 1 or resolution_out < 1:
        raise ValueError(f"need num_shards, batch and resolution_out >= 1, got {num_shards}, {batch}, "
                         f"{resolution_out}")
    all_rows = _check_captions(captions)
    rows = shard_rows(all_rows, shard, num_shards)
    image_seed(seed, 0)  # validates the seed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = spec if isinstance(spec, Sampler) else load_sampler(spec, device=device, dtype=dtype)
    rec = asdict(sampler.record)
    source = {} if isinstance(spec, Sampler) else {
        "folder": str(spec.folder), **({"lora": str(spec.lora)} if spec.lora is not None else {})}
    _plan(out_dir, all_rows, num_shards, seed, sampler.record, resolution_out, source, on_change=on_plan_change)
    ids = {f"{p:06d}.png" for p, _, _ in rows}
    for tmp in out_dir.glob(".*.png.*.tmp"):  # left by a kill; only this shard's (other shards share the folder)
        if tmp.name[1:].split(".png.")[0] + ".png" in ids:
            tmp.unlink(missing_ok=True)
    manifest = out_dir / manifest_name(shard, num_shards)
    expect = {"seed": seed, "model_hash": rec["model_hash"], "steps": rec["steps"], "guidance": rec["guidance"],
              "resolution": rec["resolution"], "resolution_out": resolution_out, "dtype": rec["dtype"]}
    done = _resume(manifest, out_dir, rows, expect)
    todo = [r for r in rows if r[0] not in done]
    if limit is not None:
        todo = todo[:max(0, limit)]
    with open(manifest, "ab") as fh, tqdm(total=len(rows), initial=len(done), desc=f"shard {shard}/{num_shards}",
                                          unit="img", disable=not progress) as bar:
        slowest = 0.0
        for start in range(0, len(todo), batch):
            if should_stop is not None and should_stop(slowest):
                break
            t0 = time.perf_counter()
            chunk = todo[start:start + batch]
            images = sampler([c for _, _, c in chunk], [image_seed(seed, p) for p, _, _ in chunk], pad_to=batch)
            for (p, img_id, caption), image in zip(chunk, images, strict=True):
                png = to_png(image, resolution_out)
                name = f"{p:06d}.png"
                write_bytes_atomic(out_dir / name, png)
                row = {"prompt_id": p, "image_id": img_id, "caption": caption, "file": name, "sha256": _sha256(png),
                       "image_seed": image_seed(seed, p), **expect, "kind": rec["kind"], "model": rec["name"],
                       "revision": rec["revision"], "shard": shard, "num_shards": num_shards, "batch": batch,
                       "device": sampler.device.type}
                fh.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
                fh.flush()  # the row is durable once the PNG is: a kill loses at most the image in flight
            bar.update(len(chunk))
            slowest = max(slowest, time.perf_counter() - t0)
    return manifest


class IncompleteSamplesError(ValueError):
    """A sample folder lacks images (``missing``), lists some twice (``duplicates``) or has unplanned ones."""

    def __init__(self, message: str, missing: list[int], duplicates: list[int]):
        super().__init__(message)
        self.missing, self.duplicates = missing, duplicates


def _ids(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def merge_manifests(out_dir: str | Path, *, expected: Iterable[int] | None = None) -> Path:
    """Write ``out_dir/manifest.jsonl``: every shard manifest's rows sorted by prompt id, after checking that every
    planned prompt id (``plan.json``, or ``expected``) appears exactly once and its PNG exists. Raises
    ``IncompleteSamplesError`` naming the missing or duplicate ids and the shards to rerun."""
    out_dir = Path(out_dir)
    plan_path = out_dir / PLAN_FILE
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else None
    files = sorted(out_dir.glob("manifest-*-of-*.jsonl"))
    if plan is not None:
        other = [f.name for f in files if not f.name.endswith(f"-of-{plan['num_shards']:03d}.jsonl")]
        if other:
            raise ValueError(f"{out_dir}: manifests {other} do not belong to the plan's {plan['num_shards']} shards")
    if expected is None and plan is None:
        raise ValueError(f"{out_dir} has no {PLAN_FILE}; pass the expected prompt ids")
    planned = list(plan["prompt_ids"]) if expected is None else [int(p) for p in expected]
    rows: dict[int, dict[str, Any]] = {}
    dup: set[int] = set()
    for f in files:
        for row in _read_rows(f, repair=False):
            p = int(row["prompt_id"])
            if p in rows:
                dup.add(p)
            rows[p] = row
    missing = sorted(set(planned) - set(rows))
    extra = sorted(set(rows) - set(planned))
    absent = sorted(p for p, r in rows.items() if not (out_dir / r["file"]).exists())
    if missing or dup or extra or absent:
        parts = []
        if missing:
            n = plan["num_shards"] if plan else 0
            pos = {p: k for k, p in enumerate(planned)}
            shards = sorted({pos[p] % n for p in missing}) if n else []
            parts.append(f"{len(missing)} of {len(planned)} images missing (prompt ids {_ids(missing)})"
                         + (f"; rerun shard(s) {_ids(shards)} of {n}" if shards else ""))
        if dup:
            parts.append(f"listed more than once: {_ids(sorted(dup))}")
        if extra:
            parts.append(f"not in the plan: {_ids(extra)}")
        if absent:
            parts.append(f"PNG missing for listed ids {_ids(absent)} (rerun their shards)")
        raise IncompleteSamplesError(f"{out_dir}: " + "; ".join(parts), missing + absent, sorted(dup))
    merged = b"".join(json.dumps(rows[p], ensure_ascii=False).encode() + b"\n" for p in sorted(rows))
    write_bytes_atomic(out_dir / MERGED_FILE, merged)
    return out_dir / MERGED_FILE

"""The COCO-2014 validation reference of the evaluation protocols (design §6, eval_protocol.md, spec §9.2).

``download_coco`` fetches the official layout (``val2014/COCO_val2014_*.jpg`` and
``annotations/captions_val2014.json``) from images.cocodataset.org and nothing else, on a machine with network;
``prepare_coco`` turns that layout into one output folder, with no network unless told to download:

- ``images/{image_id:012d}.png``: every image of the json, RGB, centre crop to the shorter side (the
  StyleGAN2-ADA/EDM ``center-crop`` box that SiD-LSG's COCO tool uses), PIL Lanczos resize to ``resolution``².
  No EXIF rotation, as in the official tool. Written to a temporary name and renamed, so a killed preparation
  resumes: a rerun skips the PNGs already there.
- ``captions.jsonl``: one row per annotation, in the json's order: ``{"image_id", "annotation_id", "caption"}``
  (caption as stored in the json).
- ``captions.txt``: every caption, whitespace collapsed, one per line: the list training must never see
  (``distill`` ``forbidden_captions``).
- ``subsets/{name}.jsonl``: ``{"prompt_id", "image_id", "caption"}`` rows, ``prompt_id`` = 0, 1, ... in file order;
  one row per distinct image. Generate sample ``prompt_id`` from row ``prompt_id``.
- ``manifest.json``: resolution, counts, subsets (requested and actual size, seed, exclusions, sha256 of the ids),
  sha256 of the captions json. Written last: a folder without it is unfinished.

Caption per image: the **last** annotation of that image in the json's annotation order, whitespace collapsed. The
official tool writes one caption file per annotation, so the last one written stays (spec §9.2, §15: immaterial).

Subsets: ``numpy.random.default_rng(seed).permutation(n)`` over the ascending list of eligible image ids, first
``size`` of them, in permutation order (``subset_ids``). ``paper10k`` (seed 0) and ``clean30k`` (seed 1) draw from all
images; ``heldout`` (seed 2) only from images in neither, so that checkpoint selection never sees a reported image.
A dataset smaller than a subset gives ``min(size, available)`` rows; the manifest records both numbers.

Reference statistics (``reference_stats``): an ``.npz`` with ``mu`` (D, float64), ``sigma`` (D x D, float64; the
unbiased covariance, as ``np.cov``), ``count``, ``protocol``, ``file_list_sha256`` (``file_list_hash``: names and byte
sizes of the sorted PNGs) and ``format``. ``mu``/``sigma`` are the key names clean-fid uses for its statistics.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_atomic, write_json_atomic, write_text_atomic
from ..hashing import file_digest

__all__ = [
    "ANNOTATIONS_URL",
    "SUBSETS",
    "VAL_IMAGES_URL",
    "CocoDownloadError",
    "CocoReference",
    "ReferenceStats",
    "SubsetSpec",
    "center_crop_resize",
    "download_coco",
    "file_list_hash",
    "load_reference_stats",
    "prepare_coco",
    "reference_stats",
    "subset_ids",
]

log = logging.getLogger(__name__)

# Module-level so that tests (and mirrors) can point them elsewhere; read at call time.
VAL_IMAGES_URL = "http://images.cocodataset.org/zips/val2014.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
DOWNLOAD_TIMEOUT_S = 60.0

CAPTIONS_JSON = "annotations/captions_val2014.json"
IMAGES_FOLDER = "val2014"
COCO_VAL2014_IMAGES = 40_504  # the full set; a different count is only logged (tests use tiny sets)
MANIFEST_FORMAT = "sidrepro-coco-reference/1"
STATS_FORMAT = "sidrepro-reference-stats/1"
SUBSET_RNG = "numpy.random.default_rng(seed).permutation over the ascending eligible image ids, first `size`"
CAPTION_CHOICE = "last annotation of the image in the json's annotation order, whitespace collapsed"


class CocoDownloadError(FileNotFoundError):
    """The COCO files are missing and could not be downloaded (offline machine, broken or incomplete archive)."""


@dataclasses.dataclass(frozen=True)
class SubsetSpec:
    """A caption subset: up to ``size`` images drawn with ``seed``, never from the subsets named in ``exclude``."""

    size: int
    seed: int
    exclude: tuple[str, ...] = ()


# Order matters: a subset may only exclude subsets listed before it.
SUBSETS: dict[str, SubsetSpec] = {
    "paper10k": SubsetSpec(10_000, 0),
    "clean30k": SubsetSpec(30_000, 1),
    "heldout": SubsetSpec(1_000, 2, exclude=("paper10k", "clean30k")),
}


@dataclasses.dataclass(frozen=True)
class CocoReference:
    """A prepared reference folder (see the module docstring for the layout)."""

    root: Path
    images_dir: Path
    captions: Path
    captions_txt: Path
    subsets: dict[str, Path]
    manifest: Path

    @classmethod
    def open(cls, out: Path) -> CocoReference:
        """The finished preparation in ``out``; ``FileNotFoundError`` when its manifest is missing (unfinished)."""
        out = Path(out)
        manifest_path = out / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} is missing: {out} is not a finished COCO reference; run "
                                    f"prepare_coco into it (a rerun resumes where it stopped)")
        manifest = json.loads(manifest_path.read_text())
        return cls._at(out, list(manifest["subsets"]))

    @classmethod
    def _at(cls, out: Path, names: Iterable[str]) -> CocoReference:
        return cls(root=out, images_dir=out / "images", captions=out / "captions.jsonl",
                   captions_txt=out / "captions.txt",
                   subsets={name: out / "subsets" / f"{name}.jsonl" for name in names},
                   manifest=out / "manifest.json")

    def load_manifest(self) -> dict[str, Any]:
        """The manifest as a dictionary."""
        return json.loads(self.manifest.read_text())

    def load_subset(self, name: str) -> list[tuple[int, int, str]]:
        """The ``(prompt_id, image_id, caption)`` rows of subset ``name``, in prompt order."""
        if name not in self.subsets:
            raise ValueError(f"unknown subset {name!r}; {self.root} has {', '.join(self.subsets)}")
        rows = []
        with self.subsets[name].open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    rows.append((int(row["prompt_id"]), int(row["image_id"]), str(row["caption"])))
        return rows

    def image_path(self, image_id: int) -> Path:
        """The reference PNG of ``image_id``."""
        return self.images_dir / f"{image_id:012d}.png"


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """``image`` as RGB, centre-cropped to its shorter side and Lanczos-resized to ``resolution`` x ``resolution``.

    The crop box is the one of the StyleGAN2-ADA/EDM dataset tool (``(w - s) // 2`` to ``(w + s) // 2``), so odd
    margins put the extra pixel on the right/bottom, as there.
    """
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    return image.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)


def subset_ids(image_ids: Iterable[int], size: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """Up to ``size`` distinct ids of ``image_ids`` not in ``exclude``, in the order of a seeded permutation.

    ``numpy.random.default_rng(seed).permutation`` over the ascending eligible ids: the same on every machine for
    the same id set, whatever order the ids came in.
    """
    pool = sorted(set(image_ids) - set(exclude))
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[int(i)] for i in order[: max(0, min(size, len(pool)))]]


def prepare_coco(coco_dir: Path, out: Path, *, resolution: int = 256, download: bool = False, workers: int = 0,
                 subset_sizes: Mapping[str, int] | None = None) -> CocoReference:
    """Prepare the COCO-2014 val reference in ``out`` from the official layout in ``coco_dir`` (module docstring).

    ``download``: fetch missing inputs from the official addresses into ``coco_dir`` (unzipped, archives deleted).
    ``workers``: threads converting images (0: in this thread; Pillow releases the GIL while decoding/resizing).
    ``subset_sizes``: override the sizes of ``SUBSETS`` (tests); seeds and exclusions stay.

    Raises ``FileNotFoundError`` for missing inputs (``CocoDownloadError`` when downloading failed) and
    ``ValueError`` when the captions json and the images do not match or ``out`` holds another preparation.
    """
    coco_dir, out = Path(coco_dir), Path(out)
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    specs = _subset_specs(subset_sizes)
    _ensure_inputs(coco_dir, download)
    json_path, val_dir = coco_dir / CAPTIONS_JSON, coco_dir / IMAGES_FOLDER
    files, annotations = _read_captions_json(json_path)
    _check_images_match(files, json_path, val_dir)
    if len(files) != COCO_VAL2014_IMAGES:
        log.warning("%s lists %d images, not the %d of full COCO-2014 val", json_path, len(files),
                    COCO_VAL2014_IMAGES)

    ref = CocoReference._at(out, specs)
    ref.images_dir.mkdir(parents=True, exist_ok=True)
    ref.manifest.unlink(missing_ok=True)  # from here on the folder is unfinished until the manifest is rewritten
    for stale in ref.images_dir.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    todo = _pending_images(files, ref.images_dir, resolution)
    log.info("COCO reference: %d of %d images to convert into %s", len(todo), len(files), ref.images_dir)
    _convert_images([(val_dir / files[i], ref.image_path(i)) for i in todo], resolution, workers)

    rows = "".join(json.dumps({"image_id": i, "annotation_id": a, "caption": c}, ensure_ascii=False) + "\n"
                   for i, a, c in annotations)
    write_text_atomic(ref.captions, rows)
    write_text_atomic(ref.captions_txt, "".join(_clean(c) + "\n" for _, _, c in annotations if _clean(c)))

    chosen: dict[int, str] = {}
    for image_id, _, caption in annotations:  # later annotations overwrite earlier ones: the last one stays
        chosen[image_id] = _clean(caption)
    (out / "subsets").mkdir(exist_ok=True)
    drawn: dict[str, list[int]] = {}
    subsets_meta: dict[str, Any] = {}
    for name, spec in specs.items():
        excluded = {i for other in spec.exclude for i in drawn[other]}
        ids = drawn[name] = subset_ids(files, spec.size, spec.seed, exclude=excluded)
        text = "".join(json.dumps({"prompt_id": k, "image_id": i, "caption": chosen[i]}, ensure_ascii=False) + "\n"
                       for k, i in enumerate(ids))
        write_text_atomic(ref.subsets[name], text)
        if len(ids) < spec.size:
            log.warning("subset %s: only %d of the requested %d images available", name, len(ids), spec.size)
        subsets_meta[name] = {
            "file": f"subsets/{name}.jsonl", "requested": spec.size, "size": len(ids), "seed": spec.seed,
            "exclude": list(spec.exclude), "rng": SUBSET_RNG,
            "image_ids_sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest(),
        }

    manifest = {
        "format": MANIFEST_FORMAT,
        "source": "COCO-2014 val",
        "resolution": resolution,
        "transform": "RGB, centre crop to the shorter side, PIL Lanczos resize, PNG",
        "num_images": len(files),
        "num_annotations": len(annotations),
        "captions_json": str(json_path),
        "captions_json_sha256": file_digest(json_path),
        "caption_choice": CAPTION_CHOICE,
        "subsets": subsets_meta,
        "pillow_version": Image.__version__,
        "numpy_version": np.__version__,
    }
    write_json_atomic(ref.manifest, manifest)
    return ref


def _subset_specs(sizes: Mapping[str, int] | None) -> dict[str, SubsetSpec]:
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(SUBSETS))
    if unknown:
        raise ValueError(f"unknown subsets {unknown}; known: {', '.join(SUBSETS)}")
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"subset sizes must be >= 0, got {sizes}")
    return {name: dataclasses.replace(spec, size=sizes.get(name, spec.size)) for name, spec in SUBSETS.items()}


def _clean(caption: str) -> str:
    return " ".join(caption.split())


# --------------------------------------------------------------------------------------------- inputs and download


def download_coco(coco_dir: Path) -> dict[str, Any]:
    """Download what is missing of the official layout into ``coco_dir`` (as ``prepare_coco(..., download=True)``
    does) and check that the captions json and the images match; nothing else is written, so the preparation can run
    later on a machine without network. Returns what a stamp records: the folder, the image and annotation counts and
    the sha256 of the captions json. Raises as ``prepare_coco`` does for its inputs."""
    coco_dir = Path(coco_dir)
    _ensure_inputs(coco_dir, download=True)
    json_path = coco_dir / CAPTIONS_JSON
    files, annotations = _read_captions_json(json_path)
    _check_images_match(files, json_path, coco_dir / IMAGES_FOLDER)
    return {"coco_dir": str(coco_dir), "num_images": len(files), "num_annotations": len(annotations),
            "captions_json_sha256": file_digest(json_path)}


def _ensure_inputs(coco_dir: Path, download: bool) -> None:
    """Make sure the captions json and the image folder exist, downloading them when allowed."""
    json_path, val_dir = coco_dir / CAPTIONS_JSON, coco_dir / IMAGES_FOLDER
    # (what is missing, archive address, member of the archive that provides it)
    missing = []
    if not json_path.is_file():
        missing.append((json_path, ANNOTATIONS_URL, CAPTIONS_JSON))
    if not val_dir.is_dir():
        missing.append((val_dir, VAL_IMAGES_URL, IMAGES_FOLDER))
    if not missing:
        return
    if not download:
        lines = "; ".join(f"{path} is missing (download {url} and unzip it into {coco_dir}, it provides {member})"
                          for path, url, member in missing)
        raise FileNotFoundError(f"COCO-2014 val input incomplete: {lines}. Or pass download=True. Expected layout: "
                                f"{coco_dir}/{IMAGES_FOLDER}/COCO_val2014_*.jpg and {coco_dir}/{CAPTIONS_JSON}")
    coco_dir.mkdir(parents=True, exist_ok=True)
    for _, url, member in missing:
        archive = coco_dir / url.rsplit("/", 1)[-1]
        if not archive.is_file():
            _download(url, archive, coco_dir)
        _extract(archive, member, coco_dir)


def _download(url: str, archive: Path, coco_dir: Path) -> None:
    """``url`` into ``archive`` through a ``.part`` file; checks the length the server announced and the zip."""
    part = archive.with_name(archive.name + ".part")
    by_hand = (f"download it by hand and unzip it into {coco_dir} so that {coco_dir}/{IMAGES_FOLDER}/"
               f"COCO_val2014_*.jpg and {coco_dir}/{CAPTIONS_JSON} exist, then rerun")
    log.info("downloading %s into %s", url, archive)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as handle:
            expected = response.headers.get("Content-Length")
            done, next_log = 0, 1 << 29
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                done += len(chunk)
                if done >= next_log:
                    log.info("%s: %.1f GB of %s", archive.name, done / 1e9, expected or "?")
                    next_log += 1 << 29
    except (urllib.error.URLError, OSError) as err:  # connection refused/reset, DNS, timeout, disk full
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise CocoDownloadError(f"could not download {url}: {reason}. If this machine has no internet access, "
                                f"{by_hand}") from err
    if expected is not None and part.stat().st_size != int(expected):
        size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise CocoDownloadError(f"download of {url} incomplete ({size} of {expected} bytes): rerun, or {by_hand}")
    if not zipfile.is_zipfile(part):
        part.unlink(missing_ok=True)
        raise CocoDownloadError(f"{url} did not give a zip archive: {by_hand}")
    os.replace(part, archive)


def _extract(archive: Path, member: str, coco_dir: Path) -> None:
    """Unpack ``member`` (a file, or a folder with its files) of ``archive`` into ``coco_dir``, then delete the
    archive. Goes through a staging folder, so an interrupted extraction never looks finished."""
    staging = coco_dir / f".{Path(member).name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist()
                     if (n == member or n.startswith(member.rstrip("/") + "/")) and not n.endswith("/")]
            if not names:
                raise CocoDownloadError(f"{archive} does not contain {member}: delete it and download it again")
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:  # never write outside coco_dir
                    raise CocoDownloadError(f"{archive}: unsafe member name {name!r}")
                zf.extract(name, staging)  # zipfile checks each member's CRC while reading it
    except zipfile.BadZipFile as err:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise CocoDownloadError(f"{archive} is corrupt ({err}); deleted it: rerun to download it again") from err
    target = coco_dir / member
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / member, target)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()


def _read_captions_json(path: Path) -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    """``{image_id: file_name}`` and the ``(image_id, annotation_id, caption)`` rows in the json's order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files: dict[int, str] = {}
        for image in data["images"]:
            image_id = int(image["id"])
            if image_id in files:
                raise ValueError(f"image id {image_id} listed twice")
            files[image_id] = str(image["file_name"])
        annotations = [(int(a["image_id"]), int(a["id"]), str(a["caption"])) for a in data["annotations"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a COCO captions json ({type(err).__name__}: {err}): it needs 'images' "
                         f"[{{id, file_name}}] and 'annotations' [{{image_id, id, caption}}]") from err
    orphans = sorted({i for i, _, _ in annotations} - set(files))
    if orphans:
        raise ValueError(f"{path}: {len(orphans)} annotated image ids are not in 'images', e.g. {orphans[:5]}")
    uncaptioned = sorted(set(files) - {i for i, _, _ in annotations})
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} images have no caption, e.g. {uncaptioned[:5]}")
    return files, annotations


def _check_images_match(files: Mapping[int, str], json_path: Path, val_dir: Path) -> None:
    on_disk = {p.name for p in val_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"} and p.is_file()}
    listed = set(files.values())
    missing, extra = sorted(listed - on_disk), sorted(on_disk - listed)
    if missing or extra:
        raise ValueError(
            f"captions json does not match the images: {len(missing)} of the {len(listed)} images listed in "
            f"{json_path} are missing from {val_dir}{_examples(missing)}, and {len(extra)} of the {len(on_disk)} "
            f"images in {val_dir} are not listed in the json{_examples(extra)}. Use the complete val2014 folder "
            f"({VAL_IMAGES_URL}) with the captions_val2014.json that belongs to it ({ANNOTATIONS_URL})")


def _examples(names: Sequence[str]) -> str:
    return f" (e.g. {', '.join(names[:3])})" if names else ""


# --------------------------------------------------------------------------------------------- image conversion


def _pending_images(files: Mapping[int, str], images_dir: Path, resolution: int) -> list[int]:
    """Image ids still to convert; refuses a folder holding other images or another resolution."""
    wanted = {f"{i:012d}.png" for i in files}
    present = {p.name for p in images_dir.glob("*.png")}
    foreign = sorted(present - wanted)
    if foreign:
        raise ValueError(f"{images_dir} holds {len(foreign)} PNGs that are not images of this captions json"
                         f"{_examples(foreign)}: it belongs to another preparation; use an empty output folder")
    todo = []
    for image_id in sorted(files):
        name = f"{image_id:012d}.png"
        if name not in present:
            todo.append(image_id)
            continue
        with Image.open(images_dir / name) as done:  # reads the header only
            if done.size != (resolution, resolution):
                raise ValueError(f"{images_dir / name} is {done.size[0]}x{done.size[1]}, not {resolution}x"
                                 f"{resolution}: {images_dir} was prepared at another resolution; use another "
                                 f"output folder")
    return todo


def _convert_one(job: tuple[Path, Path], resolution: int) -> None:
    src, dst = job
    try:
        with Image.open(src) as image:
            result = center_crop_resize(image, resolution)
    except OSError as err:
        raise ValueError(f"cannot read {src} ({err}): replace it with the file from {VAL_IMAGES_URL}") from err
    # No fsync per image (40k files on a cluster file system): the rename alone keeps half files away on a kill.
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    result.save(tmp, format="PNG")
    os.replace(tmp, dst)


def _convert_images(jobs: Sequence[tuple[Path, Path]], resolution: int, workers: int) -> None:
    start, every = time.monotonic(), max(1, len(jobs) // 20)
    if workers > 0:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            results: Iterable[None] = pool.map(lambda job: _convert_one(job, resolution), jobs)
            for k, _ in enumerate(results, 1):
                if k % every == 0:
                    log.info("converted %d/%d images (%.0f s)", k, len(jobs), time.monotonic() - start)
    else:
        for k, job in enumerate(jobs, 1):
            _convert_one(job, resolution)
            if k % every == 0:
                log.info("converted %d/%d images (%.0f s)", k, len(jobs), time.monotonic() - start)


# --------------------------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Statistics of a reference stats file."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    protocol: str
    file_list_sha256: str


def _png_files(images_dir: Path) -> list[Path]:
    return sorted(p for p in Path(images_dir).glob("*.png") if p.is_file())


def file_list_hash(images_dir: Path) -> str:
    """sha256 over the sorted PNG names of ``images_dir`` with their byte sizes (contents are not read: 40k files)."""
    digest = hashlib.sha256()
    for path in _png_files(images_dir):
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_reference_stats(path: Path) -> ReferenceStats:
    """Read a file written by ``reference_stats``."""
    with np.load(Path(path), allow_pickle=False) as data:
        if "format" not in data or str(data["format"]) != STATS_FORMAT:
            raise ValueError(f"{path} is not a reference stats file ({STATS_FORMAT}); delete it to recompute")
        return ReferenceStats(mu=data["mu"], sigma=data["sigma"], count=int(data["count"]),
                              protocol=str(data["protocol"]), file_list_sha256=str(data["file_list_sha256"]))


def reference_stats(images_dir: Path, out_file: Path, *, feature_fn: Callable[[Any], Any], protocol: str,
                    batch: int = 64) -> Path:
    """Mean and covariance (float64) of ``feature_fn`` over every PNG of ``images_dir``, saved to ``out_file``.

    ``feature_fn`` takes a ``uint8`` tensor ``N x 3 x H x W`` and returns ``N x D`` features (numpy or torch). The
    file is reused when its ``protocol`` and file-list hash match; it is recomputed when the images changed, and a
    file of another protocol is refused (``ValueError``) rather than overwritten. Written atomically.
    """
    import torch  # only here: preparing the images must not pay torch's import

    images_dir, out_file = Path(images_dir), Path(out_file)
    files = _png_files(images_dir)
    if len(files) < 2:
        raise FileNotFoundError(f"{images_dir} holds {len(files)} PNGs; reference statistics need at least 2 "
                                f"(prepare the reference images first)")
    digest = file_list_hash(images_dir)
    if out_file.is_file():
        old = load_reference_stats(out_file)
        if old.protocol != protocol:
            raise ValueError(f"{out_file} holds statistics of protocol {old.protocol!r}, not {protocol!r}: give "
                             f"each protocol its own file")
        if old.file_list_sha256 == digest:
            log.info("reusing %s (%d images, protocol %s)", out_file, old.count, protocol)
            return out_file
        log.info("%s is stale (the images in %s changed): recomputing", out_file, images_dir)

    moments = _Moments()
    shape = None
    for start in range(0, len(files), batch):
        arrays = []
        for path in files[start:start + batch]:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            shape = shape or array.shape
            if array.shape != shape:
                raise ValueError(f"{path} is {array.shape[1]}x{array.shape[0]}, the others {shape[1]}x{shape[0]}")
            arrays.append(array)
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        moments.update(_as_features(feature_fn(images), len(arrays)))
    mu, sigma = moments.result()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fields = {"mu": mu, "sigma": sigma, "count": np.int64(moments.count), "protocol": np.str_(protocol),
              "file_list_sha256": np.str_(digest), "format": np.str_(STATS_FORMAT)}
    write_atomic(out_file, lambda handle: np.savez(handle, **fields))
    return out_file


def _as_features(features: Any, n: int) -> np.ndarray:
    if hasattr(features, "detach"):  # a torch tensor, possibly on an accelerator
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"feature_fn must return {n} x D features, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("feature_fn returned non-finite features")
    return array


class _Moments:
    """Streaming mean and unbiased covariance in float64, centred on the first batch's mean for accuracy."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        if self.shift is None:
            self.shift = features.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((features.shape[1], features.shape[1]))
        assert self.sum is not None and self.outer is not None
        if features.shape[1] != self.shift.shape[0]:
            raise ValueError(f"feature_fn changed its dimension: {features.shape[1]} after {self.shift.shape[0]}")
        centred = features - self.shift
        self.sum += centred.sum(axis=0)
        self.outer += centred.T @ centred
        self.count += features.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.shift is not None and self.sum is not None and self.outer is not None
        mean = self.sum / self.count
        sigma = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return self.shift + mean, (sigma + sigma.T) / 2

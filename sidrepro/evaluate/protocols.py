"""Named, versioned evaluation protocols and the metrics record written with every number (design §6).

``paper`` is what the authors ran (eval_protocol.md): 10k COCO-2014 val captions, PNG samples Lanczos-resized to
256 px, FID with the TF-Inception network in clean-fid's ``legacy_tensorflow`` mode against all of COCO-2014 val
(centre crop, Lanczos 256), CLIP score = raw cosine with open_clip ViT-g-14 ``laion2b_s12b_b42k``. ``clean`` is
reported beside it: clean-fid's ``clean`` mode, 30k captions, ViT-g-14 ``laion2b_s34b_b88k``. FID values of
different modes are not comparable, so every record names its protocol and version. Bump ``version`` whenever a
field that changes the numbers changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..atomic import write_json_atomic
from ..hashing import file_digest


@dataclass(frozen=True)
class ClipPreprocessing:
    """How images and captions reach the CLIP model (the official ``networks/clip.py``)."""

    scale: str = "uint8 / 255"
    resize: int = 224
    interpolation: str = "bicubic (torch F.interpolate, align_corners=False, no antialias)"
    crop: str = "none"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    tokenizer: str = "open_clip SimpleTokenizer"
    context_length: int = 77
    score: str = "mean cosine of L2-normalised embeddings, raw (not x100, not clamped)"


@dataclass(frozen=True)
class EvalProtocol:
    """One named, versioned way of turning a sample folder into FID and CLIP numbers."""

    name: str
    version: int
    subset: str  # caption subset of the prepared COCO reference (reference.py: subsets/{subset}.jsonl)
    num_images: int
    image_size: int  # every sample is stored at image_size x image_size
    resize_filter: str  # how samples reach image_size (our sampler does it)
    image_format: str
    fid_mode: str  # clean-fid mode
    fid_network: str
    fid_reference: str
    clip_model: str
    clip_pretrained: str
    clip_preprocessing: ClipPreprocessing
    notes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """``name@version``, e.g. ``paper@1``."""
        return f"{self.name}@{self.version}"

    def describe(self) -> dict[str, Any]:
        """The protocol as plain JSON-ready data (tuples become lists)."""
        return {"id": self.id, **dataclasses.asdict(self)}


_COMMON_NOTES = (
    "CLIP score averaged over all images; the official code used rank 0's share only.",
    "Samples: 4-step students without CFG, T_init = 999; teachers at their table step count and pipeline default "
    "CFG (recorded per run).",
    "Samples saved as PNG (JPEG moves FID), decoded with x * 127.5 + 128 clamped to uint8.",
    "Checkpoints are selected on the held-out caption subset, never on the reported one.",
)

PROTOCOLS: dict[str, EvalProtocol] = {
    "paper": EvalProtocol(
        name="paper", version=1, subset="paper10k", num_images=10_000, image_size=256,
        resize_filter="PIL Lanczos", image_format="PNG", fid_mode="legacy_tensorflow",
        fid_network="TF-Inception-v3 inception-2015-12-05 (StyleGAN2-ADA TorchScript), 2048-d pool features",
        fid_reference="all COCO-2014 val images (~40,504), centre crop + PIL Lanczos to 256 px; float64 mu/sigma",
        clip_model="ViT-g-14", clip_pretrained="laion2b_s12b_b42k", clip_preprocessing=ClipPreprocessing(),
        notes=(*_COMMON_NOTES, "FID mode legacy_tensorflow: the network's own TF1 bilinear resize to 299."),
    ),
    "clean": EvalProtocol(
        name="clean", version=1, subset="clean30k", num_images=30_000, image_size=256,
        resize_filter="PIL Lanczos", image_format="PNG", fid_mode="clean",
        fid_network="TF-Inception-v3 inception-2015-12-05 (StyleGAN2-ADA TorchScript), 2048-d pool features",
        fid_reference="all COCO-2014 val images (~40,504), centre crop + PIL Lanczos to 256 px; float64 mu/sigma",
        clip_model="ViT-g-14", clip_pretrained="laion2b_s34b_b88k", clip_preprocessing=ClipPreprocessing(),
        notes=(*_COMMON_NOTES, "FID mode clean: clean-fid's PIL bicubic float resize to 299; not comparable with "
                               "legacy_tensorflow numbers."),
    ),
}


def get_protocol(name: str) -> EvalProtocol:
    """The protocol called ``name`` (``paper`` or ``clean``; ``name@version`` is checked against the version)."""
    base, _, version = name.partition("@")
    if base not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; valid: {', '.join(sorted(PROTOCOLS))}")
    protocol = PROTOCOLS[base]
    if version and version != str(protocol.version):
        raise ValueError(f"protocol {base!r} is at version {protocol.version}, not {version}")
    return protocol


class SampleFolderError(ValueError):
    """A sample folder that would give numbers the protocol does not define."""


_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}


def check_sample_folder(folder: Path, protocol: EvalProtocol | str, *, require_complete: bool = False
                        ) -> list[Path]:
    """The images FID would read from ``folder``, after checking they fit ``protocol``; else ``SampleFolderError``.

    Refused: JPEG files (by suffix or content), other files clean-fid would read as images (``.npy``, ...), images
    not ``image_size`` x ``image_size`` or not RGB, an empty folder, and with ``require_complete`` a count other
    than ``protocol.num_images``. Only headers are read.
    """
    from .fid import list_images

    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    folder = Path(folder)
    if not folder.is_dir():
        raise SampleFolderError(f"{folder} is not a folder")
    files = list_images(folder)
    if not files:
        raise SampleFolderError(f"{folder} holds no images")
    size = protocol.image_size
    fix = (f"regenerate the samples with our sampler (sidrepro.evaluate.sampling), which stores "
           f"{protocol.image_format} resized with {protocol.resize_filter} to {size}x{size}")
    jpeg, other, wrong_size, wrong_mode = [], [], [], []
    for path in files:
        if path.suffix.lower() in _JPEG_SUFFIXES:
            jpeg.append(path)
            continue
        if path.suffix.lower() != ".png":
            other.append(path)
            continue
        with Image.open(path) as image:
            if image.format == "JPEG":
                jpeg.append(path)
            elif image.format != "PNG":
                other.append(path)
            elif image.size != (size, size):
                wrong_size.append((path, image.size))
            elif image.mode != "RGB":
                wrong_mode.append((path, image.mode))
    problems = []
    if jpeg:
        problems.append(f"{len(jpeg)} JPEG file(s) (e.g. {jpeg[0].name}): JPEG compression moves FID; {fix}")
    if other:
        problems.append(f"{len(other)} non-PNG file(s) clean-fid would read as images (e.g. {other[0].name}): "
                        f"move them out of the folder or {fix}")
    if wrong_size:
        (p, (w, h)) = wrong_size[0]
        problems.append(f"{len(wrong_size)} image(s) not {size}x{size} (e.g. {p.name} is {w}x{h}): the protocol "
                        f"resizes every sample with {protocol.resize_filter} to {size}x{size}; {fix}")
    if wrong_mode:
        p, mode = wrong_mode[0]
        problems.append(f"{len(wrong_mode)} image(s) not RGB (e.g. {p.name} is {mode}): {fix}")
    if require_complete and len(files) != protocol.num_images:
        problems.append(f"{len(files)} images, protocol {protocol.id} needs {protocol.num_images} "
                        f"(one per caption of subset {protocol.subset})")
    if problems:
        raise SampleFolderError(f"{folder} does not fit protocol {protocol.id}:\n  - " + "\n  - ".join(problems))
    return files


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    return file_digest(path)


def metrics_record(protocol: EvalProtocol | str, *, num_images: int, fid: float | None, clip: float | None,
                   reference_stats: Path, manifest: Path, model_hash: str, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The metrics JSON of one evaluation: protocol description, count, FID, CLIP and the hashes that pin them.

    ``reference_stats`` is the FID statistics file compared against and ``manifest`` the sample folder's
    manifest; both are hashed (sha256 of the bytes). ``model_hash`` is the sampled model's hash, as the sampler
    records it. ``complete`` says whether the count is the protocol's (a held-out selection run is not).
    """
    import open_clip
    import torch

    from ..revision import code_revision
    from .fid import cleanfid_version

    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    record: dict[str, Any] = {
        "protocol": protocol.describe(),
        "protocol_id": protocol.id,
        "num_images": int(num_images),
        "complete": int(num_images) == protocol.num_images,
        "fid": None if fid is None else float(fid),
        "fid_mode": protocol.fid_mode,
        "clip_score": None if clip is None else float(clip),
        "clip_model": f"{protocol.clip_model}/{protocol.clip_pretrained}",
        "reference_stats": str(reference_stats),
        "reference_stats_sha256": sha256_file(Path(reference_stats)),
        "sample_manifest": str(manifest),
        "sample_manifest_sha256": sha256_file(Path(manifest)),
        "model_hash": model_hash,
        "versions": {"clean-fid": cleanfid_version(), "open_clip": open_clip.__version__,
                     "torch": torch.__version__},
        "code": code_revision(),
    }
    if extra:
        clash = set(extra) & set(record)
        if clash:
            raise ValueError(f"extra fields would overwrite {sorted(clash)}")
        record.update(extra)
    return record


def write_metrics(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON (sorted keys, indented) atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)

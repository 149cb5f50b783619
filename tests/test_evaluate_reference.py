"""The COCO-2014 val reference: preparation, subsets, resume, error cases, download and reference statistics."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidrepro.cli import main
from sidrepro.evaluate import reference as refmod
from sidrepro.evaluate.reference import (
    CocoDownloadError,
    CocoReference,
    center_crop_resize,
    file_list_hash,
    load_reference_stats,
    prepare_coco,
    reference_stats,
    subset_ids,
)
from sidrepro.hashing import file_digest

RES = 32  # small for speed; the real preparation uses 256
SIZES = {"paper10k": 10, "clean30k": 20, "heldout": 5}


def make_coco(root: Path, n: int = 40, seed: int = 0) -> dict:
    """A tiny COCO-layout folder: ``n`` JPEGs of varied sizes and a captions json with 1-5 captions per image,
    annotation ids deliberately out of order (so "last in the json" differs from "lowest id")."""
    rng = np.random.default_rng(seed)
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    image_ids = sorted(rng.choice(600_000, size=n, replace=False).tolist())
    images, annotations = [], []
    for image_id in image_ids:
        width, height = int(rng.integers(24, 72)), int(rng.integers(24, 72))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(pixels).save(root / "val2014" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k in range(int(rng.integers(1, 6))):
            annotations.append({"image_id": image_id, "id": 0, "caption": f" A photo {image_id}\nnumber {k}. "})
    rng.shuffle(annotations)
    for annotation, ann_id in zip(annotations, rng.permutation(len(annotations)) + 1, strict=True):
        annotation["id"] = int(ann_id)
    data = {"info": {}, "images": images, "annotations": annotations}
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco")
    return root, make_coco(root)


@pytest.fixture(scope="module")
def prepared(coco: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> CocoReference:
    return prepare_coco(coco[0], tmp_path_factory.mktemp("ref"), resolution=RES, subset_sizes=SIZES)


def copy_coco(coco: tuple[Path, dict], dst: Path) -> Path:
    shutil.copytree(coco[0], dst)
    return dst


# ----------------------------------------------------------------------------------------------------- subsets


def test_subset_ids_fixed_across_machines_and_input_order():
    ids = [1000 + 7 * k for k in range(50)]
    # numpy.random.default_rng(0).permutation(50) starts 18, 23, 36, 4, 2, 3, 34, 24, 20, 26: hard-coded so that a
    # change of the generator (numpy upgrade) shows up here instead of silently moving the evaluation set.
    expected = [1126, 1161, 1252, 1028, 1014, 1021, 1238, 1168, 1140, 1182]
    assert subset_ids(ids, 10, seed=0) == expected
    assert subset_ids(list(reversed(ids)) + ids[:5], 10, seed=0) == expected  # order and duplicates do not matter
    assert subset_ids(ids, 10, seed=1) != expected
    assert sorted(subset_ids(ids, 500, seed=0)) == ids  # min(size, available)
    rest = subset_ids(ids, 100, seed=2, exclude=expected)
    assert len(rest) == 40 and not set(rest) & set(expected)


# ----------------------------------------------------------------------------------------------------- centre crop


def pattern(width: int, height: int) -> Image.Image:
    """Red/blue margins around a centred square whose left (or top) half is black and the rest white."""
    side = min(width, height)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = 255  # red margin before the square
    left, top = (width - side) // 2, (height - side) // 2
    if width > height:
        pixels[:, left + side:] = (0, 0, 255)
    else:
        pixels[top + side:] = (0, 0, 255)
    square = np.full((side, side, 3), 255, np.uint8)
    if width > height:
        square[:, : side // 2] = 0
    else:
        square[: side // 2] = 0
    pixels[top:top + side, left:left + side] = square
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [(80, 48), (48, 80), (81, 48)])
def test_center_crop_keeps_the_centred_square(size):
    width, height = size
    out = np.asarray(center_crop_resize(pattern(width, height), 16)).astype(int)
    assert out.shape == (16, 16, 3)
    # No red or blue margin got in: the square is grey-level only, and Lanczos keeps R = G = B there.
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    first, last = (out[:, 0], out[:, -1]) if width > height else (out[0], out[-1])
    assert first.max() < 30 and last.min() > 225
    assert (np.asarray(center_crop_resize(pattern(width, height), min(size))) ==
            np.asarray(pattern(width, height).crop(((width - min(size)) // 2, (height - min(size)) // 2,
                                                    (width + min(size)) // 2, (height + min(size)) // 2)))).all()


# ----------------------------------------------------------------------------------------------------- preparation


def test_prepare_writes_images_captions_subsets_manifest(coco, prepared):
    root, data = coco
    ids = sorted(image["id"] for image in data["images"])
    pngs = sorted(prepared.images_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:012d}.png" for i in ids]
    for path in pngs[:5]:
        with Image.open(path) as image:
            assert image.size == (RES, RES) and image.mode == "RGB"
    # Pixels are the centre crop + Lanczos of the decoded JPEG.
    first = data["images"][0]
    with Image.open(root / "val2014" / first["file_name"]) as jpg:
        expected = np.asarray(center_crop_resize(jpg, RES))
    assert (np.asarray(Image.open(prepared.image_path(first["id"]))) == expected).all()

    rows = [json.loads(line) for line in prepared.captions.read_text().splitlines()]
    assert [(r["image_id"], r["annotation_id"], r["caption"]) for r in rows] == [
        (a["image_id"], a["id"], a["caption"]) for a in data["annotations"]]
    assert len(prepared.captions_txt.read_text().splitlines()) == len(data["annotations"])

    last = {a["image_id"]: " ".join(a["caption"].split()) for a in data["annotations"]}
    lowest = {a["image_id"]: a for a in sorted(data["annotations"], key=lambda a: -a["id"])}
    assert any(last[i] != " ".join(lowest[i]["caption"].split()) for i in ids)  # the test data tells them apart
    subsets = {name: prepared.load_subset(name) for name in SIZES}
    for name, rows in subsets.items():
        assert len(rows) == SIZES[name]
        assert [r[0] for r in rows] == list(range(SIZES[name]))
        assert len({r[1] for r in rows}) == len(rows)
        assert all(caption == last[image_id] for _, image_id, caption in rows)
    assert [r[1] for r in subsets["paper10k"]] == subset_ids(ids, 10, seed=0)
    heldout = {r[1] for r in subsets["heldout"]}
    assert not heldout & {r[1] for r in subsets["paper10k"] + subsets["clean30k"]}

    manifest = prepared.load_manifest()
    assert manifest["resolution"] == RES and manifest["num_images"] == 40
    assert manifest["num_annotations"] == len(data["annotations"])
    assert manifest["subsets"]["clean30k"] == manifest["subsets"]["clean30k"] | {"size": 20, "requested": 20, "seed": 1}
    assert len(manifest["captions_json_sha256"]) == 64
    assert CocoReference.open(prepared.root) == prepared
    with pytest.raises(ValueError, match="unknown subset"):
        prepared.load_subset("train")


def test_two_runs_give_identical_outputs(coco, prepared, tmp_path):
    other = prepare_coco(coco[0], tmp_path / "ref", resolution=RES, subset_sizes=SIZES, workers=2)
    for name in SIZES:
        assert other.subsets[name].read_bytes() == prepared.subsets[name].read_bytes()
    for path in sorted(prepared.images_dir.glob("*.png")):
        assert (other.images_dir / path.name).read_bytes() == path.read_bytes()
    assert other.load_manifest() == prepared.load_manifest()


def test_default_sizes_take_what_is_available(coco, tmp_path):
    ref = prepare_coco(coco[0], tmp_path / "ref", resolution=8)
    subsets = ref.load_manifest()["subsets"]
    assert subsets["paper10k"] | {"requested": 10_000, "size": 40, "seed": 0} == subsets["paper10k"]
    assert subsets["heldout"]["size"] == 0 and ref.load_subset("heldout") == []


def test_killed_preparation_resumes(coco, prepared, tmp_path, monkeypatch):
    out = tmp_path / "ref"
    real, calls = refmod._convert_one, []

    def dies_after_3(job, resolution):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job)
        real(job, resolution)

    monkeypatch.setattr(refmod, "_convert_one", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        prepare_coco(coco[0], out, resolution=RES, subset_sizes=SIZES)
    assert len(list((out / "images").glob("*.png"))) == 3 and not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="not a finished"):
        CocoReference.open(out)

    (out / "images" / ".000000000001.png.999.tmp").write_bytes(b"half")  # debris of a kill mid-write
    calls.clear()
    monkeypatch.setattr(refmod, "_convert_one", lambda job, resolution: (calls.append(job), real(job, resolution)))
    ref = prepare_coco(coco[0], out, resolution=RES, subset_sizes=SIZES)
    assert len(calls) == 37 and not list(ref.images_dir.glob(".*"))

    # Delete some outputs: only those are redone, the others are left untouched.
    removed = sorted(ref.images_dir.glob("*.png"))[::8]
    kept = {p: p.stat().st_mtime_ns for p in ref.images_dir.glob("*.png") if p not in removed}
    for path in removed:
        path.unlink()
    ref.manifest.unlink()
    calls.clear()
    ref = prepare_coco(coco[0], out, resolution=RES, subset_sizes=SIZES)
    assert sorted(dst.name for _, dst in calls) == [p.name for p in removed]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    for path in prepared.images_dir.glob("*.png"):
        assert (ref.images_dir / path.name).read_bytes() == path.read_bytes()
    assert ref.load_manifest() == prepared.load_manifest()


def test_output_of_another_resolution_or_dataset_is_refused(coco, prepared, tmp_path):
    out = tmp_path / "ref"
    shutil.copytree(prepared.root, out)
    with pytest.raises(ValueError, match="another resolution"):
        prepare_coco(coco[0], out, resolution=RES * 2, subset_sizes=SIZES)
    (out / "images" / "000000000003.png").write_bytes((out / "images").glob("*.png").__next__().read_bytes())
    with pytest.raises(ValueError, match=r"1 PNGs that are not images of this captions json.*000000000003\.png"):
        prepare_coco(coco[0], out, resolution=RES, subset_sizes=SIZES)


# ----------------------------------------------------------------------------------------------------- errors


def test_missing_inputs_are_named(coco, tmp_path):
    root = copy_coco(coco, tmp_path / "coco")
    (root / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        prepare_coco(root, tmp_path / "ref", resolution=RES)
    msg = str(err.value)
    assert "captions_val2014.json is missing" in msg and "annotations_trainval2014.zip" in msg
    assert "val2014.zip" not in msg.replace("annotations_trainval2014.zip", "") and "download=True" in msg

    root = copy_coco(coco, tmp_path / "coco2")
    shutil.rmtree(root / "val2014")
    with pytest.raises(FileNotFoundError) as err:
        prepare_coco(root, tmp_path / "ref", resolution=RES)
    msg = str(err.value)
    assert f"{root / 'val2014'} is missing" in msg and "http://images.cocodataset.org/zips/val2014.zip" in msg
    assert "captions_val2014.json is missing" not in msg


def test_json_image_mismatch(coco, tmp_path):
    root = copy_coco(coco, tmp_path / "coco")
    gone = coco[1]["images"][3]["file_name"]
    (root / "val2014" / gone).unlink()
    shutil.copy(root / "val2014" / coco[1]["images"][0]["file_name"], root / "val2014" / "COCO_val2014_stray.jpg")
    with pytest.raises(ValueError, match="captions json does not match the images") as err:
        prepare_coco(root, tmp_path / "ref", resolution=RES)
    msg = str(err.value)
    assert "1 of the 40 images listed" in msg and gone in msg
    assert "1 of the 40 images in" in msg and "COCO_val2014_stray.jpg" in msg
    assert not (tmp_path / "ref").exists()  # checked before anything is written


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_download_says_what_to_do(coco, tmp_path, monkeypatch):
    port = closed_port()
    monkeypatch.setattr(refmod, "VAL_IMAGES_URL", f"http://127.0.0.1:{port}/zips/val2014.zip")
    monkeypatch.setattr(refmod, "ANNOTATIONS_URL", f"http://127.0.0.1:{port}/annotations_trainval2014.zip")
    root = tmp_path / "coco"
    with pytest.raises(CocoDownloadError) as err:
        prepare_coco(root, tmp_path / "ref", resolution=RES, download=True)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/annotations_trainval2014.zip" in msg and "by hand" in msg
    assert f"{root}/val2014/COCO_val2014_*.jpg" in msg and f"{root}/annotations/captions_val2014.json" in msg
    assert isinstance(err.value, FileNotFoundError)  # the CLI reports it as a one-line error
    assert list(root.iterdir()) == []  # no half download left


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def coco_server(coco: tuple[Path, dict], folder: Path, monkeypatch) -> Iterator[None]:
    """Serve the test COCO as the two official zip archives on 127.0.0.1 and point the download addresses at them."""
    (folder / "zips").mkdir(parents=True)
    with zipfile.ZipFile(folder / "zips" / "val2014.zip", "w") as zf:
        for path in sorted((coco[0] / "val2014").iterdir()):
            zf.write(path, f"val2014/{path.name}")
    with zipfile.ZipFile(folder / "annotations_trainval2014.zip", "w") as zf:
        zf.write(coco[0] / "annotations" / "captions_val2014.json", "annotations/captions_val2014.json")
        zf.writestr("annotations/instances_val2014.json", "{}")  # not needed: must not be unpacked
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(refmod, "VAL_IMAGES_URL", f"{base}/zips/val2014.zip")
        monkeypatch.setattr(refmod, "ANNOTATIONS_URL", f"{base}/annotations_trainval2014.zip")
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_a_server(coco, tmp_path, monkeypatch):
    root = tmp_path / "coco"
    with coco_server(coco, tmp_path / "server", monkeypatch):
        ref = prepare_coco(root, tmp_path / "ref", resolution=8, download=True)
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "val2014"]  # archives deleted after unzip
    assert [p.name for p in (root / "annotations").iterdir()] == ["captions_val2014.json"]
    assert len(list(ref.images_dir.glob("*.png"))) == 40


def test_fetch_coco_downloads_only_and_the_preparation_then_needs_no_network(coco, tmp_path, monkeypatch):
    """`sidrepro fetch-coco` (the workflow's fetch_coco) fills the official layout and writes its stamp; the
    reference is then prepared with every download address refused."""
    root, stamp = tmp_path / "coco", tmp_path / "stamps" / "coco.json"
    with coco_server(coco, tmp_path / "server", monkeypatch):
        assert main(["fetch-coco", "--coco-dir", str(root), "--stamp", str(stamp)]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "val2014"]  # nothing prepared yet
    record = json.loads(stamp.read_text())
    assert record["num_images"] == 40 and record["num_annotations"] == len(coco[1]["annotations"])
    assert record["captions_json_sha256"] == file_digest(root / "annotations" / "captions_val2014.json")

    port = closed_port()  # the network is gone: a download attempt would fail loudly
    monkeypatch.setattr(refmod, "VAL_IMAGES_URL", f"http://127.0.0.1:{port}/zips/val2014.zip")
    monkeypatch.setattr(refmod, "ANNOTATIONS_URL", f"http://127.0.0.1:{port}/annotations_trainval2014.zip")
    ref = prepare_coco(root, tmp_path / "ref", resolution=8, subset_sizes=SIZES)
    assert len(list(ref.images_dir.glob("*.png"))) == 40


def test_fetch_coco_offline_fails_without_a_stamp(coco, tmp_path, monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setattr(refmod, "VAL_IMAGES_URL", f"http://127.0.0.1:{port}/zips/val2014.zip")
    monkeypatch.setattr(refmod, "ANNOTATIONS_URL", f"http://127.0.0.1:{port}/annotations_trainval2014.zip")
    stamp = tmp_path / "coco.json"
    stamp.write_text("{}")  # an earlier run's: must not survive a failed download
    assert main(["fetch-coco", "--coco-dir", str(tmp_path / "coco"), "--stamp", str(stamp)]) == 1
    assert "could not download" in capsys.readouterr().out and not stamp.exists()


# ----------------------------------------------------------------------------------------------------- statistics


def toy_features(images: torch.Tensor) -> np.ndarray:
    """Per-channel means plus a fixed random projection of a 4x4 pooled image: a real, cheap feature map."""
    x = images.double() / 255
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
    projection = torch.from_numpy(np.random.default_rng(0).standard_normal((pooled.shape[1], 6)))
    return torch.cat([x.mean(dim=(2, 3)), pooled @ projection], dim=1).numpy()


def test_reference_stats_compute_reuse_and_refresh(prepared, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(prepared.images_dir, images)
    out = tmp_path / "stats" / "coco_paper.npz"
    assert reference_stats(images, out, feature_fn=toy_features, protocol="paper", batch=7) == out

    arrays = np.stack([np.asarray(Image.open(p)) for p in sorted(images.glob("*.png"))])
    features = toy_features(torch.from_numpy(arrays).permute(0, 3, 1, 2))
    stats = load_reference_stats(out)
    assert stats.mu.dtype == np.float64 and stats.sigma.shape == (9, 9)
    np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-14)
    assert stats.count == 40 and stats.protocol == "paper" and stats.file_list_sha256 == file_list_hash(images)
    assert not list(out.parent.glob(".*"))  # written atomically, no temporary left

    def must_not_run(batch):
        raise AssertionError("stats should have been reused")

    before = out.read_bytes()
    reference_stats(images, out, feature_fn=must_not_run, protocol="paper")
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="protocol 'paper', not 'clean'"):
        reference_stats(images, out, feature_fn=must_not_run, protocol="clean")

    sorted(images.glob("*.png"))[0].unlink()  # the image set changed: recomputed
    reference_stats(images, out, feature_fn=lambda b: torch.from_numpy(toy_features(b)), protocol="paper")
    assert load_reference_stats(out).count == 39

    with pytest.raises(ValueError, match="40 x D"):
        reference_stats(prepared.images_dir, tmp_path / "bad.npz", feature_fn=lambda b: np.zeros((1, 3)),
                        protocol="paper", batch=64)
    with pytest.raises(FileNotFoundError, match="0 PNGs"):
        reference_stats(tmp_path / "empty", tmp_path / "x.npz", feature_fn=toy_features, protocol="paper")

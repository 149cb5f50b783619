"""Prompt files and the stateless sampler (data-free), parquet image-text shards and their caches (data-aided)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sidrepro.distill.data import (
    PromptSampler,
    ShardCache,
    cache_path,
    encode_shard,
    list_shards,
    load_cache,
    load_prompts,
    merge_caches,
    normalize_caption,
    preprocess_image,
    prompt_indices,
    read_shard,
)


# --- prompts ------------------------------------------------------------------------------------------------
def test_normalize_caption():
    assert normalize_caption("  A dog  on\ta bench. ") == "a dog on a bench"
    assert normalize_caption("“A dog on a bench…”") == "a dog on a bench"
    assert normalize_caption("a dog, on a bench") == "a dog, on a bench"  # inner punctuation stays


def test_load_prompts_strips_and_drops_blank_lines(tmp_path: Path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a red fox \n\n   \nthe moon over hills\na red fox\n", encoding="utf-8")
    assert load_prompts(path) == ["a red fox", "the moon over hills", "a red fox"]


@pytest.mark.parametrize(("name", "text", "match"), [
    ("missing.txt", None, "does not exist"),
    ("empty.txt", "\n  \n\n", "is empty"),
    ("prompts.csv", "a,b\n", r"\.txt"),
])
def test_load_prompts_errors(tmp_path: Path, name: str, text: str | None, match: str):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_prompts(path)
    assert name in str(err.value)


def test_load_prompts_refuses_evaluation_captions(tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A man riding a horse.\na castle at dusk\nTwo cats  on a sofa\na bowl of fruit\n"
                       "A kitchen with a stove\n")
    coco = ["a man riding a horse", "two cats on a sofa.", "A bowl of fruit!", "a kitchen with a stove", "x"]
    with pytest.raises(ValueError) as err:
        load_prompts(prompts, forbidden=coco)
    msg = str(err.value)
    assert "prompts.txt" in msg and "4 of 5" in msg and "COCO" in msg and "remove" in msg
    assert "'A man riding a horse.'" in msg and "'a bowl of fruit'" in msg
    assert "kitchen" not in msg  # three examples only

    caption_file = tmp_path / "coco_val.txt"
    caption_file.write_text("\n".join(coco) + "\n")
    with pytest.raises(ValueError, match=r"coco_val\.txt"):
        load_prompts(prompts, forbidden=caption_file)
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(prompts, forbidden=tmp_path / "nope.txt")
    assert load_prompts(prompts, forbidden=["a dog", "a castle"]) == load_prompts(prompts)


# --- the stateless sampler ----------------------------------------------------------------------------------
def test_prompt_indices_ranks_are_disjoint_and_cover_world_one():
    n, batch, world = 50, 12, 4
    for nimg in (0, 12, 36, 100):  # batches inside one epoch (one straddling a boundary may repeat an index)
        parts = [prompt_indices(n, seed=3, nimg=nimg, batch=batch, rank=r, world=world) for r in range(world)]
        assert all(len(p) == batch // world for p in parts)
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == batch  # batch < n: no index twice within one global batch
        assert flat == prompt_indices(n, seed=3, nimg=nimg, batch=batch, rank=0, world=1)
        two = [prompt_indices(n, seed=3, nimg=nimg, batch=batch, rank=r, world=2) for r in range(2)]
        assert two[0] + two[1] == flat


@pytest.mark.parametrize(("n", "batch"), [(10, 5), (7, 4), (3, 8)])
def test_prompt_indices_every_prompt_once_per_epoch(n: int, batch: int):
    stream = [i for step in range(6) for i in prompt_indices(n, seed=1, nimg=step * batch, batch=batch)]
    for epoch in range(len(stream) // n):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n] or n < 3  # a fresh shuffle per epoch


def test_prompt_indices_is_a_pure_function():
    args = dict(seed=7, nimg=1234, batch=16, rank=1, world=2)
    assert prompt_indices(1000, **args) == prompt_indices(1000, **args)
    assert prompt_indices(1000, **args) != prompt_indices(1000, **{**args, "seed": 8})
    # Resume: starting at any nimg replays the uninterrupted stream.
    long = prompt_indices(100, seed=0, nimg=0, batch=64)
    assert prompt_indices(100, seed=0, nimg=32, batch=32) == long[32:]


def test_prompt_indices_errors():
    with pytest.raises(ValueError, match="not divisible"):
        prompt_indices(10, seed=0, nimg=0, batch=10, rank=0, world=4)
    with pytest.raises(ValueError, match="rank"):
        prompt_indices(10, seed=0, nimg=0, batch=8, rank=2, world=2)
    with pytest.raises(ValueError, match="at least one"):
        prompt_indices(0, seed=0, nimg=0, batch=8)


def test_prompt_sampler():
    prompts = [f"prompt {i}" for i in range(20)]
    ranks = [PromptSampler(prompts, seed=5, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == 20
    assert ranks[0].batch(8, 8) + ranks[1].batch(8, 8) == PromptSampler(prompts, seed=5).batch(8, 8)
    fake, gen = ranks[0].batch(0, 8, phase=0, phases=2), ranks[0].batch(0, 8, phase=1, phases=2)
    assert len(fake) == 4 and not set(fake) & set(gen)


# --- shards ---------------------------------------------------------------------------------------------------
def _png(color, size=(40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_gradient(size=(24, 48)) -> bytes:
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(255 * x // w, 255 * y // h, 128) for y in range(h) for x in range(w)])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


CORRUPT = b"\x89PNG\r\n\x1a\nthis is not an image"


def _write_shard(path: Path, captions: list[str], images: list[bytes], *, struct: bool = False) -> Path:
    column = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)] if struct else images
    pd.DataFrame({"llava": captions, "image": column, "id": range(len(captions))}).to_parquet(path, index=False)
    return path


def _rows(k: int, n: int) -> tuple[list[str], list[bytes]]:
    """Shard ``k``: ``n`` rows, captions ``s{k} r{i}``, a solid PNG or a gradient JPEG; row 3 is corrupt."""
    caps = [f"s{k} r{i}" for i in range(n)]
    imgs = [_jpeg_gradient() if i % 2 else _png((30 * i % 256, 20 * k, 200)) for i in range(n)]
    if n > 3:
        imgs[3] = CORRUPT
    return caps, imgs


class Encoders:
    """Fake encoders that compute something real and count their calls: images average-pooled to a 4 x 4 grid
    with a fourth channel, captions to a dict of tensors (character codes, a mask, no pooled vector)."""

    def __init__(self):
        self.image_calls = self.prompt_calls = 0

    def images(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        z = F.adaptive_avg_pool2d(x, 4)
        return torch.cat([z, z.mean(1, keepdim=True)], dim=1)

    def prompts(self, captions: list[str]) -> dict[str, torch.Tensor | None]:
        self.prompt_calls += 1
        codes = torch.zeros(len(captions), 12, 2)
        for i, c in enumerate(captions):
            vals = torch.tensor([float(ord(ch)) for ch in c[:12]])
            codes[i, :len(vals), 0] = vals
            codes[i, :, 1] = len(c)
        mask = (codes[..., 0] > 0).long()
        return {"embeds": codes, "mask": mask, "pooled": None}


def test_list_shards(tmp_path: Path):
    for name in ("train_10.parquet", "train_2.parquet", "train_001.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path)] == ["train_001.parquet", "train_2.parquet", "train_10.parquet"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"train_\*\.parquet.*/empty"):
        list_shards(empty)


@pytest.mark.parametrize("struct", [False, True])
def test_read_shard(tmp_path: Path, struct: bool):
    caps, imgs = _rows(0, 5)
    path = _write_shard(tmp_path / "train_000.parquet", caps, imgs, struct=struct)
    got_caps, got_imgs = read_shard(path)
    assert got_caps == caps and got_imgs == imgs
    with pytest.raises(ValueError, match=r"'caption'.*\['llava', 'image', 'id'\]"):
        read_shard(path, caption_column="caption")


def test_preprocess_image():
    red = preprocess_image(_png((255, 0, 0)), 16)
    assert red.shape == (3, 16, 16) and red.dtype == torch.float32
    assert torch.equal(red[0], torch.ones(16, 16)) and torch.equal(red[1:], -torch.ones(2, 16, 16))
    grad = preprocess_image(_jpeg_gradient((24, 48)), 12)  # portrait: width -> 12, centre crop of the height
    assert grad.shape == (3, 12, 12) and grad.min() >= -1 and grad.max() <= 1
    assert grad[1, -1].mean() > grad[1, 0].mean()  # green grows downwards
    # Three vertical bands: the centre crop keeps the middle (green) one.
    bands = Image.new("RGB", (96, 32))
    for x0, color in ((0, (255, 0, 0)), (32, (0, 255, 0)), (64, (0, 0, 255))):
        bands.paste(color, (x0, 0, x0 + 32, 32))
    buf = io.BytesIO()
    bands.save(buf, format="PNG")
    mid = preprocess_image(buf.getvalue(), 16)
    assert mid[1, :, 4:12].min() > 0.9 and mid[0, :, 4:12].max() < -0.9
    for bad in (CORRUPT, b"", _png((1, 2, 3))[:60]):
        with pytest.raises(ValueError, match="corrupt"):
            preprocess_image(bad, 16)


def _expected_latents(imgs: list[bytes], res: int) -> torch.Tensor:
    good = [preprocess_image(b, res) for b in imgs if b != CORRUPT]
    return Encoders().images(torch.stack(good))


def test_encode_shard_rows_skips_reuse_and_rebuild(tmp_path: Path):
    caps, imgs = _rows(0, 7)
    shard = _write_shard(tmp_path / "train_000.parquet", caps, imgs, struct=True)
    enc = Encoders()
    kw = dict(encode_images=enc.images, encode_prompts=enc.prompts, resolution=16, batch=4)
    out = encode_shard(shard, tmp_path / "cache", **kw)
    assert out == cache_path(tmp_path / "cache", shard, resolution=16)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["rows"] == 6 and meta["skipped"] == 1 and meta["skipped_rows"] == [3]
    assert meta["resolution"] == 16 and meta["shard"] == "train_000.parquet" and len(meta["sha256"]) == 64
    data = load_cache(out)
    assert data.rows.tolist() == [0, 1, 2, 4, 5, 6]
    assert data.captions == [c for i, c in enumerate(caps) if i != 3]
    assert data.latents.dtype == torch.float32 and data.latents.shape == (6, 4, 4, 4)
    torch.testing.assert_close(data.latents, _expected_latents(imgs, 16))
    assert data.cond_fields == ["embeds", "mask", "pooled"] and set(data.cond) == {"embeds", "mask"}
    torch.testing.assert_close(data.cond["embeds"], enc.prompts(data.captions)["embeds"])
    assert enc.image_calls == 2  # 6 good rows in batches of 4

    calls = (enc.image_calls, enc.prompt_calls)
    assert encode_shard(shard, tmp_path / "cache", **kw) == out
    assert (enc.image_calls, enc.prompt_calls) == calls  # reused, nothing encoded

    caps2, imgs2 = _rows(0, 9)
    _write_shard(shard, caps2, imgs2)  # the shard changed: its hash no longer matches
    encode_shard(shard, tmp_path / "cache", **kw)
    assert enc.image_calls > calls[0] and load_cache(out).meta["rows"] == 8
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_encode_shard_text_only_and_bf16(tmp_path: Path):
    caps, imgs = _rows(1, 6)
    shard = _write_shard(tmp_path / "train_001.parquet", caps, imgs)
    enc = Encoders()
    out = encode_shard(shard, tmp_path, encode_images=None, encode_prompts=enc.prompts, resolution=None,
                       with_images=False, batch=4)
    data = load_cache(out)
    assert out.name == "train_001-txt.pt" and data.latents is None and enc.image_calls == 0
    assert data.captions == caps  # no image is decoded, so the corrupt one costs no row
    lat, cond, got = data.select([5, 0])
    assert lat is None and got == [caps[5], caps[0]] and cond["pooled"] is None and cond["embeds"].shape == (2, 12, 2)

    half = load_cache(encode_shard(shard, tmp_path, encode_images=enc.images, encode_prompts=enc.prompts,
                                   resolution=8, latent_dtype=torch.bfloat16, cond_dtype=torch.bfloat16))
    assert half.latents.dtype == torch.bfloat16 and half.cond["embeds"].dtype == torch.bfloat16
    assert half.cond["mask"].dtype == torch.long  # masks keep their dtype


def test_merge_of_rank_parts_equals_world_one(tmp_path: Path):
    caps, imgs = _rows(2, 9)
    shard = _write_shard(tmp_path / "train_002.parquet", caps, imgs)
    enc = Encoders()
    kw = dict(encode_images=enc.images, encode_prompts=enc.prompts, resolution=8, batch=2)
    parts = [encode_shard(shard, tmp_path / "parts", rank=r, world=3, **kw) for r in (2, 0, 1)]
    assert load_cache(parts[1]).rows.tolist() == [0, 6]  # rank 0 of 3: rows 0, 3 (corrupt), 6
    merged = load_cache(merge_caches(parts, tmp_path / "merged.pt"))
    single = load_cache(encode_shard(shard, tmp_path / "single", **kw))
    assert merged.rows.tolist() == single.rows.tolist() and merged.captions == single.captions
    torch.testing.assert_close(merged.latents, single.latents)
    torch.testing.assert_close(merged.cond, single.cond)
    assert merged.meta["skipped_rows"] == [3] and merged.meta["world"] == 1
    with pytest.raises(ValueError, match="one part per rank"):
        merge_caches(parts[:2], tmp_path / "bad.pt")


def _shard_folder(tmp_path: Path, n_shards: int = 3, rows: int = 6) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(n_shards):
        _write_shard(folder / f"train_{k:03d}.parquet", *_rows(k, rows))
    return folder


def test_shard_cache_rotation_and_sampling(tmp_path: Path):
    folder = _shard_folder(tmp_path)
    enc = Encoders()
    kw = dict(encode_images=enc.images, encode_prompts=enc.prompts, resolution=8, images_per_shard=8, seed=4)
    cache = ShardCache(folder, tmp_path / "cache", **kw)
    assert cache.n_shards == 3 and cache.captions(2) == ["s0 r0", "s0 r1"]
    for nimg, shard in ((0, 0), (4, 0), (8, 1), (20, 2), (24, 0), (32, 1)):
        assert cache.shard_index(nimg) == shard
        lat, cond, caps = cache.batch(nimg, 4)
        assert {c.split()[0] for c in caps} == {f"s{shard}"}
        assert lat.shape == (4, 4, 4, 4) and cond["embeds"].shape == (4, 12, 2) and cond["pooled"] is None
        data = cache.shard(shard)
        pos = [data.captions.index(c) for c in caps]
        torch.testing.assert_close(lat, data.latents[pos])
    # Within one visit of a shard, every usable row (5 of 6: row 3 is corrupt) once before any repeats.
    first = [c for nimg in (0, 4) for c in cache.batch(nimg, 4)[2]]
    assert sorted(first[:5]) == sorted(c for c in _rows(0, 6)[0] if c != "s0 r3")
    revisit = [c for nimg in (24, 28) for c in cache.batch(nimg, 4)[2]]
    assert revisit != first  # the next visit of shard 0 (period 3) draws a fresh shuffle
    # Ranks split the global batch; fake and generator phases are disjoint draws from the same shard.
    ranks = [ShardCache(folder, tmp_path / "cache", rank=r, world=2, barrier=lambda: None, **kw) for r in (0, 1)]
    assert ranks[0].batch(8, 4)[2] + ranks[1].batch(8, 4)[2] == cache.batch(8, 4)[2]
    fake, gen = cache.batch(8, 2, phase=0, phases=2)[2], cache.batch(8, 2, phase=1, phases=2)[2]
    assert not set(fake) & set(gen)
    # Caches are reused across instances (a resumed run encodes nothing).
    calls = enc.image_calls
    again = ShardCache(folder, tmp_path / "cache", **kw)
    assert again.batch(20, 4)[2] == cache.batch(20, 4)[2] and enc.image_calls == calls


def test_shard_cache_can_drop_old_caches(tmp_path: Path):
    folder = _shard_folder(tmp_path, n_shards=2, rows=4)
    enc = Encoders()
    cache = ShardCache(folder, tmp_path / "cache", encode_images=None, encode_prompts=enc.prompts, with_images=False,
                       images_per_shard=4, keep_old_caches=False)
    cache.batch(0, 2)
    assert cache.batch(4, 2)[0] is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["train_001-txt.json", "train_001-txt.pt"]
    with pytest.raises(ValueError, match="encode_images"):
        ShardCache(folder, tmp_path / "cache", encode_prompts=enc.prompts, resolution=8)


def test_shard_cache_two_ranks_encode_and_merge(tmp_path: Path):
    folder = _shard_folder(tmp_path, n_shards=1, rows=7)
    barrier = threading.Barrier(2, timeout=20)
    encoders = [Encoders(), Encoders()]
    results: dict[int, object] = {}

    def run(rank: int) -> None:
        cache = ShardCache(folder, tmp_path / "cache", encode_images=encoders[rank].images,
                           encode_prompts=encoders[rank].prompts, resolution=8, rank=rank, world=2,
                           barrier=barrier.wait)
        results[rank] = cache.shard(0)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].captions == results[1].captions == [c for c in _rows(0, 7)[0] if c != "s0 r3"]
    assert encoders[0].image_calls == encoders[1].image_calls == 1  # each rank encoded only its share
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["train_000-img8.json", "train_000-img8.pt"]


def test_encode_shard_with_tiny_sd3(tmp_path: Path, tiny_zoo: dict[str, Path]):
    from sidrepro.teachers.base import Conditioning
    from sidrepro.teachers.load import load_teacher

    ad = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    calls = {"images": 0, "prompts": 0}

    def images(x):
        calls["images"] += 1
        return ad.encode(x)

    def prompts(c):
        calls["prompts"] += 1
        return ad.encode_prompts(c)

    caps, imgs = _rows(0, 5)
    caps[1] = ""  # an empty caption gets the empty-prompt conditioning
    shard = _write_shard(tmp_path / "train_000.parquet", caps, imgs, struct=True)
    kw = dict(encode_images=images, encode_prompts=prompts, resolution=64, batch=3)
    out = encode_shard(shard, tmp_path / "cache", **kw)
    data = load_cache(out)
    assert data.meta["rows"] == 4 and data.meta["skipped_rows"] == [3] and calls == {"images": 2, "prompts": 2}
    assert data.latents.shape == (4, 16, 8, 8) and torch.isfinite(data.latents).all()
    assert data.cond_fields == ["embeds", "mask", "pooled"] and "mask" not in data.cond
    lat, cond, got = data.select([0, 1], Conditioning)
    ref = ad.encode_prompts(got)
    assert isinstance(cond, Conditioning) and cond.mask is None
    torch.testing.assert_close(cond.embeds, ref.embeds)
    torch.testing.assert_close(cond.pooled, ref.pooled)

    encode_shard(shard, tmp_path / "cache", **kw)
    assert calls == {"images": 2, "prompts": 2}  # reused
    _write_shard(shard, *_rows(0, 6))
    assert load_cache(encode_shard(shard, tmp_path / "cache", **kw)).meta["rows"] == 5
    assert calls["images"] == 4

    sc = ShardCache.from_adapter([shard], tmp_path / "cache2", ad, images_per_shard=4)
    lat, cond, got = sc.batch(0, 2)
    assert isinstance(cond, Conditioning) and lat.shape == (2, 16, 8, 8) and cond.embeds.shape[0] == 2
    assert "tiny-sd3@" in sc.shard(0).meta["key"]

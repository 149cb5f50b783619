"""The workflow's data inputs, offline: the pinned dataset snapshot against a fake hub (lock file, reuse, errors),
the data-free prompt file from parquet captions (dedup, COCO overlap, atomic output), and the CLIP weights in a local
hub cache where ``load_clip``'s look-up finds them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import FakeHub, FakeRepo, dead_endpoint, isolate_hf

from sidrepro.cli import main
from sidrepro.data.captions import extract_prompts
from sidrepro.data.clip_weights import fetch_clip_weights
from sidrepro.data.dataset import DatasetLayoutError, fetch_dataset
from sidrepro.teachers.hub import MARKER_NAME, HubOfflineError, RevisionNotFoundError

A, B = "a" * 40, "b" * 40
REPO = "brivangl/midjourney-v6-llava"
CLIP_REPO = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the bytes are never decoded here


def shard(captions: list[str | None], *, caption_column: str = "llava", image_column: str = "image") -> bytes:
    """A parquet shard in the midjourney-v6-llava layout (caption strings, image bytes)."""
    table = pa.table({caption_column: pa.array(captions, pa.string()),
                      image_column: pa.array([PNG] * len(captions), pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


SHARDS = {
    "data/train_000.parquet": shard(["A red cube on a table.", "two cats\nasleep", None, "   ",
                                     "a red cube on a table"]),
    "data/train_001.parquet": shard(["A man riding a horse on a beach.", "Two cats asleep!", "a lighthouse at dusk"]),
}
COCO = ["a man riding a horse on a beach", "A plate of food."]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_hf(monkeypatch, tmp_path)


@pytest.fixture
def repos() -> dict[str, FakeRepo]:
    files = {**SHARDS, "README.md": b"# midjourney-v6-llava\n"}
    return {
        f"datasets/{REPO}": FakeRepo(files, commit=A),
        "datasets/org/no-captions": FakeRepo({"data/train_000.parquet": shard(["x"], caption_column="text")},
                                             commit=A),
        CLIP_REPO: FakeRepo({"open_clip_model.safetensors": b"\x01" * 512, "open_clip_config.json": b"{}"},
                            commit=A),
    }


@pytest.fixture
def fake(repos):
    with FakeHub(repos) as server:
        yield server


# ----------------------------------------------------------------------------------------------- dataset fetch
def test_fetch_dataset_pins_the_revision_and_reuses_the_lock(fake, repos, tmp_path):
    dest, lock, stamp = tmp_path / "mj", tmp_path / "hub-lock.json", tmp_path / "stamp" / "shards.json"
    data = fetch_dataset(REPO, "main", dest, lock_file=lock, endpoint=fake.url, stamp=stamp)

    assert data.snapshot.commit == A and data.shards_dir == dest / "data"
    assert [p.name for p in data.shards] == ["train_000.parquet", "train_001.parquet"]
    assert not (dest / "README.md").exists()  # only the shard glob is fetched
    assert json.loads(lock.read_text()) == {f"datasets/{REPO}": {"requested": "main", "commit": A}}
    marker = json.loads((dest / MARKER_NAME).read_text())
    assert marker["repo_type"] == "dataset" and marker["commit"] == A
    assert json.loads(stamp.read_text())["commit"] == A and json.loads(stamp.read_text())["shards"] == 2
    assert fake.paths("GET")[0] == f"/api/datasets/{REPO}/revision/main"
    assert all(p.startswith(f"/datasets/{REPO}/resolve/{A}/") for p in fake.paths("HEAD"))

    # main moves on; the lock keeps the first commit, and a complete snapshot needs no hub at all
    repos[f"datasets/{REPO}"].commit, repos[f"datasets/{REPO}"].refs = B, {"old": A}
    seen = len(fake.requests)
    assert fetch_dataset(REPO, "main", dest, lock_file=lock, endpoint=fake.url).snapshot.commit == A
    assert fetch_dataset(REPO, "main", dest, lock_file=lock, endpoint=dead_endpoint()).snapshot.commit == A
    assert len(fake.requests) == seen
    fresh = fetch_dataset(REPO, "main", tmp_path / "elsewhere", lock_file=lock, endpoint=fake.url)
    assert fresh.snapshot.commit == A  # a new download also gets the locked commit, not the branch head


def test_fetch_dataset_command_prints_the_commit(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    stamp = tmp_path / "shards.json"
    rc = main(["fetch-dataset", "--out", str(tmp_path / "mj"), "--lock", str(tmp_path / "lock.json"),
               "--stamp", str(stamp)])
    assert rc == 0 and f"{REPO}@{A[:12]}: 2 shards" in capsys.readouterr().out
    assert json.loads(stamp.read_text())["repo_id"] == REPO


def test_offline_without_a_snapshot_names_the_problem_and_the_fix(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError) as info:
        fetch_dataset(REPO, "main", tmp_path / "mj", endpoint=fake.url)
    message = str(info.value)
    assert "cannot reach" in message and REPO in message and "HF_HUB_OFFLINE" in message
    assert "sidrepro fetch-dataset" in message and "copy" in message
    assert fake.requests == []


def test_unknown_revision_names_the_revision_and_the_dataset_page(fake, tmp_path):
    with pytest.raises(RevisionNotFoundError) as info:
        fetch_dataset(REPO, "v9.9", tmp_path / "mj", endpoint=fake.url)
    message = str(info.value)
    assert "'v9.9'" in message and f"https://huggingface.co/datasets/{REPO}" in message
    assert "--update-lock" in message


def test_dataset_without_the_expected_columns_is_refused(fake, tmp_path, monkeypatch, capsys):
    with pytest.raises(DatasetLayoutError) as info:
        fetch_dataset("org/no-captions", "main", tmp_path / "bad", endpoint=fake.url)
    message = str(info.value)
    assert "'llava'" in message and "'image'" in message and "['text'" in message
    assert "--caption-column" in message and "Fix:" in message

    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    stamp = tmp_path / "stamp.json"
    rc = main(["fetch-dataset", "org/no-captions", "--out", str(tmp_path / "bad"), "--lock",
               str(tmp_path / "lock.json"), "--stamp", str(stamp)])
    assert rc == 1 and "no column" in capsys.readouterr().out and not stamp.exists()


def test_model_and_dataset_of_one_id_keep_separate_lock_entries(repos, tmp_path):
    repos[REPO] = FakeRepo({"model_index.json": b"{}"}, commit=B)  # a model repo with the same id
    lock = tmp_path / "lock.json"
    with FakeHub(repos) as server:
        from sidrepro.teachers.hub import fetch_snapshot

        fetch_snapshot(REPO, "main", tmp_path / "model", lock_file=lock, endpoint=server.url)
        fetch_dataset(REPO, "main", tmp_path / "mj", lock_file=lock, endpoint=server.url)
    assert json.loads(lock.read_text()) == {REPO: {"requested": "main", "commit": B},
                                            f"datasets/{REPO}": {"requested": "main", "commit": A}}


# -------------------------------------------------------------------------------------------------- prompt file
def write_shards(folder: Path) -> Path:
    for name, data in SHARDS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder / "data"


def test_prompts_are_deduplicated_cleaned_and_coco_captions_dropped(tmp_path):
    shards = write_shards(tmp_path / "mj")
    coco = tmp_path / "captions.txt"
    coco.write_text("\n".join(COCO) + "\n")
    out = tmp_path / "out" / "prompts.txt"
    stats = extract_prompts(shards, out, exclude=coco)

    assert out.read_text().splitlines() == ["A red cube on a table.", "two cats asleep", "a lighthouse at dusk"]
    assert (stats.shards, stats.rows, stats.empty, stats.duplicates, stats.overlap, stats.written) == (2, 8, 2, 2, 1, 3)
    assert stats.overlap_examples == ["A man riding a horse on a beach."]
    assert "1 evaluation (COCO) captions dropped" in stats.summary()
    assert sorted(p.name for p in out.parent.iterdir()) == ["prompts.txt"]  # no temp file left


def test_overlap_refused_leaves_no_file_and_keeps_an_earlier_one(tmp_path):
    shards = write_shards(tmp_path / "mj")
    out = tmp_path / "prompts.txt"
    with pytest.raises(ValueError, match=r"1 of 8 captions are evaluation \(COCO\) captions.*--on-overlap drop"):
        extract_prompts(shards, out, exclude=COCO, on_overlap="refuse")
    assert not out.exists() and list(tmp_path.glob(".prompts.txt.*")) == []
    out.write_text("earlier\n")
    with pytest.raises(ValueError):
        extract_prompts(shards, out, exclude=COCO, on_overlap="refuse")
    assert out.read_text() == "earlier\n"


def test_prompts_from_shards_without_the_caption_column(tmp_path):
    bad = tmp_path / "train_000.parquet"
    bad.write_bytes(shard(["x"], caption_column="text"))
    with pytest.raises(ValueError, match=r"no caption column 'llava'.*\['text', 'image'\].*--caption-column"):
        extract_prompts(tmp_path, tmp_path / "prompts.txt")
    assert extract_prompts(tmp_path, tmp_path / "prompts.txt", caption_column="text").written == 1


def test_prompts_command_prints_the_counts(tmp_path, capsys):
    shards = write_shards(tmp_path / "mj")
    coco = tmp_path / "captions.txt"
    coco.write_text("\n".join(COCO) + "\n")
    out = tmp_path / "prompts.txt"
    assert main(["prompts", "--shards", str(shards), "--out", str(out), "--exclude", str(coco)]) == 0
    printed = capsys.readouterr().out
    assert "8 captions in 2 shards" in printed and "1 evaluation (COCO) captions dropped" in printed
    assert "3 prompts written" in printed
    # a prompt file of one's own still goes through the training-time check
    from sidrepro.distill.prompts import load_prompts

    assert len(load_prompts(out, forbidden=coco)) == 3


# ------------------------------------------------------------------------------------------------- CLIP weights
def test_clip_weights_land_where_load_clip_looks_and_are_pinned(fake, repos, tmp_path, monkeypatch):
    from sidrepro.evaluate.clip_score import cached_weights

    cache, lock = tmp_path / "clip", tmp_path / "lock.json"
    info = fetch_clip_weights("ViT-g-14", "laion2b_s12b_b42k", cache, lock_file=lock, endpoint=fake.url)
    found = cached_weights("ViT-g-14", "laion2b_s12b_b42k", cache)
    assert found is not None and Path(info["file"]) == found and found.name == "open_clip_model.safetensors"
    assert info["commit"] == A and json.loads(lock.read_text()) == {CLIP_REPO: {"requested": "main", "commit": A}}
    assert found.read_bytes() == b"\x01" * 512

    repos[CLIP_REPO].commit, repos[CLIP_REPO].refs = B, {"old": A}
    seen = len(fake.requests)
    again = fetch_clip_weights("ViT-g-14", "laion2b_s12b_b42k", cache, lock_file=lock, endpoint=dead_endpoint())
    assert again == info and len(fake.requests) == seen  # pinned and cached: no network

    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    stamp = tmp_path / "paper.json"
    assert main(["fetch-clip", "--protocol", "paper", "--cache", str(cache), "--lock", str(lock),
                 "--stamp", str(stamp)]) == 0
    assert json.loads(stamp.read_text())["protocol"] == "paper"


def test_clip_weights_offline_without_cache(tmp_path):
    with pytest.raises(HubOfflineError, match="cannot reach"):
        fetch_clip_weights("ViT-g-14", "laion2b_s34b_b88k", tmp_path / "clip", endpoint=dead_endpoint())

"""Pinned hub snapshots against a fake hub on 127.0.0.1: downloads, lock file, offline reuse, error messages and
that the token never leaks."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo, dead_endpoint, isolate_hf
from huggingface_hub import constants

from sidrepro.teachers import hub
from sidrepro.teachers.hub import (
    MARKER_NAME,
    GatedRepoError,
    HubError,
    HubOfflineError,
    IncompleteSnapshotError,
    InvalidTokenError,
    LockMismatchError,
    RepoNotFoundError,
    RevisionNotFoundError,
    fetch_snapshot,
    resolve_token,
    verify_snapshot,
)

A, B = "a" * 40, "b" * 40
FILES = {"model_index.json": b'{"_class_name": "Tiny"}', "scheduler/scheduler_config.json": b"{}",
         "transformer/diffusion_pytorch_model.safetensors": b"\x00" * 2048}
GRANTED = "hf_GrantedSecretToken0123456789"
DENIED = "hf_DeniedSecretToken9876543210"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_hf(monkeypatch, tmp_path)


@pytest.fixture
def repos() -> dict[str, FakeRepo]:
    return {
        "org/tiny": FakeRepo(dict(FILES), commit=A),
        "org/gated": FakeRepo(dict(FILES), commit=A, gated=True, granted_tokens=frozenset({GRANTED})),
        "org/gated-api": FakeRepo(dict(FILES), commit=A, gated=True, gate_api=True),
        "org/truncated": FakeRepo(dict(FILES), commit=A,
                                  served={"transformer/diffusion_pytorch_model.safetensors": b"\x00" * 1000}),
        "org/vanished": FakeRepo(dict(FILES), commit=A, served={"scheduler/scheduler_config.json": None}),
        "org/slow": FakeRepo(dict(FILES), commit=A, api_delay_s=3.0),
    }


@pytest.fixture
def fake(repos):
    with FakeHub(repos) as server:
        yield server


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name or p.suffix == ".tmp")


# ----------------------------------------------------------------------------------------------------- happy path
def test_fetch_writes_complete_snapshot_marker_and_lock(fake, tmp_path):
    dest, lock = tmp_path / "snap" / "org--tiny", tmp_path / "teachers.lock.json"
    snap = fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url)

    assert snap == hub.Snapshot("org/tiny", A, dest, tuple(sorted(FILES)))
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    marker = json.loads((dest / MARKER_NAME).read_text())
    assert marker["repo_id"] == "org/tiny" and marker["commit"] == A and marker["requested"] == "main"
    assert marker["files"] == {name: len(data) for name, data in FILES.items()}
    assert json.loads(lock.read_text()) == {"org/tiny": {"requested": "main", "commit": A}}
    assert leftovers(dest.parent) == [] and leftovers(tmp_path) == []
    # the routes huggingface_hub 2.4.0 used: repo info, recursive tree, HEAD + GET /resolve per file
    assert fake.paths("GET")[:2] == ["/api/models/org/tiny/revision/main", f"/api/models/org/tiny/tree/{A}"]
    assert sorted(fake.paths("HEAD")) == sorted(f"/org/tiny/resolve/{A}/{name}" for name in FILES)


def test_complete_snapshot_is_reused_without_network(fake, tmp_path):
    dest, lock = tmp_path / "org--tiny", tmp_path / "lock.json"
    first = fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url)
    seen = len(fake.requests)
    # the lock pins the commit, the marker matches it: nothing is asked of the hub, even a dead one
    assert fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url) == first
    assert fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=dead_endpoint()) == first
    assert fetch_snapshot("org/tiny", A, dest, endpoint=dead_endpoint()) == first
    assert len(fake.requests) == seen


def test_allow_patterns_select_files_and_a_pattern_change_refetches(fake, tmp_path):
    dest = tmp_path / "org--tiny"
    snap = fetch_snapshot("org/tiny", A, dest, allow_patterns=["model_index.json", "scheduler/*"], endpoint=fake.url)
    assert snap.files == ("model_index.json", "scheduler/scheduler_config.json")
    assert not (dest / "transformer").exists()
    snap = fetch_snapshot("org/tiny", A, dest, endpoint=fake.url)  # all files now: the old snapshot is replaced
    assert snap.files == tuple(sorted(FILES)) and (dest / "transformer").is_dir()
    assert leftovers(tmp_path) == []
    with pytest.raises(HubError, match="matches allow_patterns"):
        fetch_snapshot("org/tiny", A, tmp_path / "none", allow_patterns=["nothing/*"], endpoint=fake.url)


# ------------------------------------------------------------------------------------------------------ lock file
def test_lock_pins_the_first_resolution_until_update_lock(fake, repos, tmp_path):
    dest, lock = tmp_path / "org--tiny", tmp_path / "lock.json"
    fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url)
    repos["org/tiny"].commit, repos["org/tiny"].refs = B, {"old": A}  # main moves on; A stays reachable

    assert fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url).commit == A
    other = fetch_snapshot("org/tiny", "main", tmp_path / "elsewhere", lock_file=lock, endpoint=fake.url)
    assert other.commit == A  # a fresh download also gets the locked commit, not the branch head
    assert f"/api/models/org/tiny/revision/{A}" in fake.paths("GET")

    updated = fetch_snapshot("org/tiny", "main", dest, lock_file=lock, endpoint=fake.url, update_lock=True)
    assert updated.commit == B and json.loads((dest / MARKER_NAME).read_text())["commit"] == B
    assert json.loads(lock.read_text())["org/tiny"] == {"requested": "main", "commit": B}


def test_lock_mismatch_says_how_to_update(fake, tmp_path):
    lock = tmp_path / "lock.json"
    fetch_snapshot("org/tiny", "main", tmp_path / "org--tiny", lock_file=lock, endpoint=fake.url)
    for revision in (B, "v2.0"):
        with pytest.raises(LockMismatchError) as info:
            fetch_snapshot("org/tiny", revision, tmp_path / "org--tiny", lock_file=lock, endpoint=fake.url)
        message = str(info.value)
        assert revision in message and A in message and str(lock) in message
        assert "--update-lock" in message and "delete" in message


def test_lock_write_keeps_other_entries_and_leaves_no_temp_files(fake, tmp_path):
    lock = tmp_path / "locks" / "lock.json"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"other/repo": {"requested": "v1", "commit": B}}))
    fetch_snapshot("org/tiny", A, tmp_path / "org--tiny", lock_file=lock, endpoint=fake.url)
    assert json.loads(lock.read_text()) == {"other/repo": {"requested": "v1", "commit": B},
                                            "org/tiny": {"requested": A, "commit": A}}
    assert sorted(p.name for p in lock.parent.iterdir() if not p.name.endswith(".flock")) == ["lock.json"]


def test_broken_lock_file_is_reported(fake, tmp_path):
    lock = tmp_path / "lock.json"
    lock.write_text("{not json")
    with pytest.raises(HubError, match="Cannot read the lock file"):
        fetch_snapshot("org/tiny", "main", tmp_path / "org--tiny", lock_file=lock, endpoint=fake.url)


# -------------------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("how", ["constant", "env"])
def test_offline_mode_uses_a_complete_local_snapshot(fake, tmp_path, monkeypatch, how):
    dest = tmp_path / "org--tiny"
    first = fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url)
    if how == "constant":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(fake.requests)
    assert fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url) == first  # branch: the marker's commit
    assert len(fake.requests) == seen


def test_offline_without_snapshot_explains_how_to_proceed(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError) as info:
        fetch_snapshot("org/tiny", "main", tmp_path / "org--tiny", endpoint=fake.url)
    message = str(info.value)
    assert "cannot reach" in message and "org/tiny" in message and "HF_HUB_OFFLINE" in message
    assert "sidrepro fetch" in message and "copy" in message and "existing local snapshot folder" in message
    assert fake.requests == []


def test_connection_refused_falls_back_or_fails_fast(fake, tmp_path):
    dest = tmp_path / "org--tiny"
    first = fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url)
    assert fetch_snapshot("org/tiny", "main", dest, endpoint=dead_endpoint()) == first
    start = time.monotonic()
    with pytest.raises(HubOfflineError, match=r"(?s)cannot reach.*org/other.*sidrepro fetch"):
        fetch_snapshot("org/other", "main", tmp_path / "org--other", endpoint=dead_endpoint())
    assert time.monotonic() - start < 5  # no retry back-off on the metadata call


def test_offline_with_a_damaged_snapshot_names_the_missing_file(fake, tmp_path):
    dest = tmp_path / "org--tiny"
    fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url)
    (dest / "model_index.json").unlink()
    assert verify_snapshot(dest, repo_id="org/tiny")[1].endswith("model_index.json (missing)")
    with pytest.raises(HubOfflineError, match=r"model_index\.json \(missing\)"):
        fetch_snapshot("org/tiny", "main", dest, endpoint=dead_endpoint())
    assert fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url).files == tuple(sorted(FILES))  # repaired


def test_timeout_is_reported_as_unreachable(fake, tmp_path):
    start = time.monotonic()
    with pytest.raises(HubOfflineError, match="timed out"):
        fetch_snapshot("org/slow", "main", tmp_path / "org--slow", endpoint=fake.url, timeout=0.3)
    assert time.monotonic() - start < 2.5


# ----------------------------------------------------------------------------------------------- hub refusals
def test_gated_repo_without_token(fake, tmp_path):
    with pytest.raises(GatedRepoError) as info:
        fetch_snapshot("org/gated", "main", tmp_path / "org--gated", endpoint=fake.url)
    error = info.value
    assert not error.token_present
    for text in ("https://huggingface.co/org/gated", "accept the licence", "hf auth login", "HF_TOKEN",
                 "no Hugging Face token"):
        assert text in str(error)
    assert not (tmp_path / "org--gated").exists()


def test_gated_repo_with_a_token_lacking_access(fake, tmp_path):
    with pytest.raises(GatedRepoError) as info:
        fetch_snapshot("org/gated", "main", tmp_path / "org--gated", endpoint=fake.url, token=DENIED)
    assert info.value.token_present
    assert "has not been granted access" in str(info.value) and "https://huggingface.co/org/gated" in str(info.value)


def test_gated_repo_with_granted_token_from_env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    snap = fetch_snapshot("org/gated", "main", tmp_path / "org--gated", endpoint=fake.url)
    assert snap.files == tuple(sorted(FILES))
    assert set(fake.seen_authorization) == {f"Bearer {GRANTED}"}


def test_gated_at_the_api_level(fake, tmp_path):
    with pytest.raises(GatedRepoError, match="HTTP 401"):
        fetch_snapshot("org/gated-api", "main", tmp_path / "x", endpoint=fake.url)


def test_repo_not_found(fake, tmp_path):
    with pytest.raises(RepoNotFoundError) as info:
        fetch_snapshot("org/tiyn", "main", tmp_path / "x", endpoint=fake.url)
    message = str(info.value)
    assert "'org/tiyn'" in message and "typos" in message and "private" in message and "HF_TOKEN" in message


def test_revision_not_found(fake, tmp_path):
    with pytest.raises(RevisionNotFoundError) as info:
        fetch_snapshot("org/tiny", "v9.9", tmp_path / "x", endpoint=fake.url)
    assert "'v9.9'" in str(info.value) and "org/tiny" in str(info.value)


def test_invalid_token(repos, tmp_path):
    with FakeHub(repos, valid_tokens=frozenset({GRANTED})) as server, pytest.raises(InvalidTokenError) as info:
        fetch_snapshot("org/tiny", "main", tmp_path / "x", endpoint=server.url, token=DENIED)
    assert "hf auth login" in str(info.value) and "settings/tokens" in str(info.value)


# ---------------------------------------------------------------------------------------------------- incomplete
def test_truncated_file_is_an_incomplete_snapshot_and_a_rerun_completes_it(fake, repos, tmp_path):
    dest = tmp_path / "org--truncated"
    with pytest.raises(IncompleteSnapshotError) as info:
        fetch_snapshot("org/truncated", "main", dest, endpoint=fake.url)
    error = info.value
    assert error.missing == ("transformer/diffusion_pytorch_model.safetensors",)
    assert "1000 of 2048 bytes" in str(error) and "Re-run the fetch" in str(error)
    assert not dest.exists()  # nothing half-written at dest

    repos["org/truncated"].served.clear()  # the hub serves the whole file again
    fake.requests.clear()
    snap = fetch_snapshot("org/truncated", "main", dest, endpoint=fake.url)
    assert (dest / "transformer/diffusion_pytorch_model.safetensors").stat().st_size == 2048
    assert snap.commit == A and leftovers(tmp_path) == []
    assert f"/org/truncated/resolve/{A}/model_index.json" not in fake.paths("GET")  # finished files were kept


def test_listed_file_missing_on_the_hub_is_incomplete(fake, tmp_path):
    with pytest.raises(IncompleteSnapshotError) as info:
        fetch_snapshot("org/vanished", "main", tmp_path / "org--vanished", endpoint=fake.url)
    assert info.value.missing == ("scheduler/scheduler_config.json",)
    assert not (tmp_path / "org--vanished").exists()


def test_dest_that_is_not_a_snapshot_is_not_replaced(fake, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(HubError, match="will not be replaced"):
        fetch_snapshot("org/tiny", "main", dest, endpoint=fake.url)
    assert (dest / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------- token
def test_resolve_token_precedence(monkeypatch, tmp_path):
    assert resolve_token() is None
    stored = Path(constants.HF_TOKEN_PATH)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text("hf_stored")
    assert resolve_token() == "hf_stored" and hub.token_source() == "huggingface_hub's stored login"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token() == "hf_env" and hub.token_source() == "HF_TOKEN"
    assert resolve_token("hf_explicit") == "hf_explicit"
    assert resolve_token(False) is None
    stored.unlink()
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="hf auth login"):
        resolve_token(True)


def test_token_never_leaks(fake, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    lock = tmp_path / "lock.json"
    snap = fetch_snapshot("org/gated", "main", tmp_path / "ok", lock_file=lock, endpoint=fake.url, token=GRANTED)
    errors = []
    for repo, token in (("org/gated", DENIED), ("org/missing", DENIED), ("org/truncated", DENIED)):
        with pytest.raises(HubError) as info:
            fetch_snapshot(repo, "main", tmp_path / repo.replace("/", "--"), endpoint=fake.url, token=token)
        errors.append(info.value)
    with pytest.raises(HubOfflineError) as info:
        fetch_snapshot("org/gated", "main", tmp_path / "x", endpoint=dead_endpoint(), token=DENIED)
    errors.append(info.value)

    texts = [repr(snap), caplog.text, *capfd.readouterr()]
    texts += ["".join(traceback.format_exception(e)) + repr(e) + repr(vars(e)) for e in errors]
    for secret in (GRANTED, DENIED):
        assert all(secret not in text for text in texts)
        for file in tmp_path.rglob("*"):
            if file.is_file():
                assert secret.encode() not in file.read_bytes(), file
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)
    assert f"Bearer {GRANTED}" in fake.seen_authorization  # it was sent, just never kept


def test_snapshot_folder_loads_with_diffusers_offline(repos, tmp_path, monkeypatch):
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1", "shift": 3.0}
    repos["org/sched"] = FakeRepo({"scheduler/scheduler_config.json": json.dumps(config).encode()}, commit=A)
    with FakeHub(repos) as server:
        snap = fetch_snapshot("org/sched", "main", tmp_path / "org--sched", endpoint=server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(snap.path, subfolder="scheduler")
    assert scheduler.config.shift == 3.0

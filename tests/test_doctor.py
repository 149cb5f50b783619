"""The preflight against a fake hub, a temp folder and injected GPU lists: every problem is found and has a fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo, dead_endpoint, isolate_hf

from sidrepro.teachers import doctor, hub
from sidrepro.teachers.doctor import Check, GpuInfo, format_report, run_checks

A, B = "a" * 40, "b" * 40
FILES = {"model_index.json": b"{}", "transformer/config.json": b"{}", "transformer/w.safetensors": b"\x00" * 4096,
         "README.md": b"card"}
PATTERNS = ("model_index.json", "transformer/*")
TOKEN = "hf_DoctorSecretToken0123456789"


@dataclass(frozen=True)
class Entry:
    """The registry's contract, duck-typed."""

    name: str
    hub_id: str
    revision: str = "main"
    allow_patterns: tuple[str, ...] = PATTERNS
    gated: bool = False
    download_gb: float = 1.0
    min_gpu_mem_gb: float = 40.0


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_hf(monkeypatch, tmp_path)


@pytest.fixture
def fake():
    repos = {"org/public": FakeRepo(dict(FILES), commit=A),
             "org/gated": FakeRepo(dict(FILES), commit=A, gated=True, granted_tokens=frozenset({TOKEN}))}
    with FakeHub(repos) as server:
        yield server


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def run(entries, tmp_path, fake=None, **kwargs) -> dict[str, Check]:
    kwargs.setdefault("requirements", None)
    kwargs.setdefault("gpu_info", lambda: [GpuInfo("H100", 85.0)] * 8)
    checks = run_checks(entries, snapshots_dir=tmp_path / "snapshots", lock_file=tmp_path / "lock.json",
                        endpoint=fake.url if fake else dead_endpoint(), **kwargs)
    assert all(c.fix for c in checks if c.ok is False), [c for c in checks if c.ok is False and not c.fix]
    return by_name(checks)


# ---------------------------------------------------------------------------------------------------------- packages
def test_packages_report_each_mismatch_with_its_pip_command(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# pins\n-c constraints.txt\nhuggingface-hub==2.4.0\npytest==0.0.1  # too old\n"
                   "surely-not-installed-pkg==1.0\nwindows-only==1.0; sys_platform == 'win32'\n")
    checks = by_name(doctor.check_packages(req))
    assert set(checks) == {"package pytest", "package surely-not-installed-pkg"}
    assert checks["package pytest"].ok is False and "pins pytest==0.0.1" in checks["package pytest"].detail
    assert checks["package pytest"].fix.endswith("-m pip install pytest==0.0.1")
    assert "not installed" in checks["package surely-not-installed-pkg"].detail

    req.write_text("huggingface-hub==2.4.0\n")
    assert [(c.name, c.ok) for c in doctor.check_packages(req)] == [("packages", True)]
    assert doctor.check_packages(tmp_path / "absent.txt")[0].ok is None


def test_project_requirements_file_is_readable():
    checks = doctor.check_packages()
    assert checks and all(c.ok is not None for c in checks)


# --------------------------------------------------------------------------------------------------------------- hub
def test_hub_reachable_unreachable_and_offline(fake):
    assert doctor.check_hub(fake.url).ok is True
    down = doctor.check_hub(dead_endpoint(), timeout=1)
    assert down.ok is False and "cannot be reached" in down.detail and "HF_HUB_OFFLINE" in down.fix
    skipped = doctor.check_hub(fake.url, offline=True)
    assert skipped.ok is None and fake.paths() == ["/api/models"]


# ------------------------------------------------------------------------------------------------------------ entries
def test_complete_snapshot_needs_no_hub(fake, tmp_path):
    entry = Entry("public", "org/public")
    dest = hub.default_snapshot_dir(tmp_path / "snapshots", "org/public")
    hub.fetch_snapshot("org/public", "main", dest, allow_patterns=PATTERNS, lock_file=tmp_path / "lock.json",
                       endpoint=fake.url)
    seen = len(fake.requests)
    checks = run([entry], tmp_path, fake)
    assert checks["public: snapshot"].ok is True and A[:12] in checks["public: snapshot"].detail
    assert "public: access" not in checks and "public: disk" not in checks
    assert len(fake.requests) == seen + 1  # the reachability probe only


def test_missing_public_snapshot_checks_access_and_disk(fake, tmp_path):
    checks = run([Entry("public", "org/public")], tmp_path, fake)
    snapshot = checks["public: snapshot"]
    assert snapshot.ok is False and "does not exist" in snapshot.detail and "sidrepro fetch" in snapshot.fix
    access = checks["public: access"]
    assert access.ok is True and A[:12] in access.detail and "3 files" in access.detail
    assert checks["public: disk"].ok is True
    assert "public: token" not in checks  # not gated


def test_gated_repo_without_token_fails_token_and_access(fake, tmp_path):
    checks = run([Entry("gated", "org/gated", gated=True)], tmp_path, fake)
    assert checks["token"].ok is None
    token = checks["gated: token"]
    assert token.ok is False and "https://huggingface.co/org/gated" in token.fix and "HF_TOKEN" in token.fix
    access = checks["gated: access"]
    assert access.ok is False and "no Hugging Face token" in access.detail and "accept the licence" in access.fix


def test_gated_repo_with_wrong_and_granted_token(fake, tmp_path, monkeypatch):
    checks = run([Entry("gated", "org/gated", gated=True)], tmp_path, fake, token="hf_other")
    assert checks["gated: token"].ok is True
    assert checks["gated: access"].ok is False and "not been granted" in checks["gated: access"].detail

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    checks = run([Entry("gated", "org/gated", gated=True)], tmp_path, fake)
    assert checks["token"].ok is True and "HF_TOKEN" in checks["token"].detail
    assert checks["gated: access"].ok is True and "access granted" in checks["gated: access"].detail
    assert TOKEN not in format_report(list(checks.values()))


def test_unknown_repo_and_revision_and_lock_mismatch(fake, tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps({"org/public": {"requested": "main", "commit": B}}))
    entries = [Entry("typo", "org/pubilc"), Entry("badrev", "org/gated", revision="v9"),
               Entry("moved", "org/public", revision="v2")]
    checks = run(entries, tmp_path, fake)
    assert checks["typo: access"].ok is False and "'org/pubilc'" in checks["typo: access"].detail
    assert checks["badrev: access"].ok is False and "'v9'" in checks["badrev: access"].detail
    moved = checks["moved: snapshot"]
    assert moved.ok is False and "pins commit" in moved.detail and "--update-lock" in moved.fix
    assert checks["lock file"].ok is True and "1 repo" in checks["lock file"].detail


def test_lock_file_states(tmp_path):
    lock = tmp_path / "lock.json"
    assert doctor.check_lock(None) is None
    assert doctor.check_lock(lock).ok is None
    lock.write_text('{"org/x": {"commit": "short"}}')
    broken = doctor.check_lock(lock)
    assert broken.ok is False and "40-hex" in broken.detail and broken.fix


def test_offline_skips_the_hub_and_judges_local_snapshots(fake, tmp_path):
    checks = run([Entry("public", "org/public")], tmp_path, fake, offline=True)
    assert checks["hub"].ok is None and checks["public: access"].ok is None
    assert checks["public: snapshot"].ok is False
    assert fake.requests == []


def test_unreachable_hub_skips_access(tmp_path):
    checks = run([Entry("public", "org/public")], tmp_path, timeout=1)
    assert checks["hub"].ok is False and checks["public: access"].ok is None


def test_disk_space(tmp_path):
    assert doctor.check_disk("x", tmp_path / "not" / "yet", 0.001).ok is True
    short = doctor.check_disk("x", tmp_path, 1e9)
    assert short.ok is False and "needed" in short.detail and "snapshots_dir" in short.fix
    assert doctor.check_disk("x", tmp_path, 0).ok is None
    checks = run([Entry("huge", "org/public", download_gb=1e9)], tmp_path, offline=True)
    assert checks["huge: disk"].ok is False


# --------------------------------------------------------------------------------------------------------------- gpus
def test_no_gpu_is_a_failure_with_a_fix(tmp_path):
    checks = run([Entry("public", "org/public")], tmp_path, offline=True, gpu_info=lambda: [])
    assert checks["gpus"].ok is False and "no CUDA GPU visible" in checks["gpus"].detail
    memory = checks["public: gpu memory"]
    assert memory.ok is False and "GPU node" in memory.fix


def test_gpu_count_and_memory(tmp_path):
    gpus = [GpuInfo("A100-40GB", 42.5), GpuInfo("A100-80GB", 85.1)]
    entries = [Entry("small", "org/public", min_gpu_mem_gb=24), Entry("big", "org/public", min_gpu_mem_gb=80)]
    checks = run(entries, tmp_path, offline=True, gpu_info=lambda: gpus, gpus_needed=8)
    assert checks["gpus"].ok is False and "8 needed" in checks["gpus"].detail and "A100-40GB" in checks["gpus"].detail
    assert checks["small: gpu memory"].ok is True
    assert checks["big: gpu memory"].ok is False and "A100-40GB" in checks["big: gpu memory"].detail

    def broken():
        raise RuntimeError("driver mismatch")

    checks = run(entries, tmp_path, offline=True, gpu_info=broken)
    assert checks["gpus"].ok is False and "driver mismatch" in checks["gpus"].detail
    assert "big: gpu memory" not in checks


# ------------------------------------------------------------------------------------------------------------- report
def test_format_report():
    report = format_report([Check("hub", True, "answers"), Check("gpus", False, "none visible", "run on a GPU node"),
                            Check("token", None, "no token")])
    assert report.splitlines() == ["[ ok ] hub: answers", "[FAIL] gpus: none visible", "       fix: run on a GPU node",
                                   "[skip] token: no token", "3 checks: 1 passed, 1 failed, 1 skipped"]
    assert doctor.failures([Check("a", True, ""), Check("b", False, "", "x")]) == [Check("b", False, "", "x")]


def test_registry_entries_run_offline(tmp_path):
    registry = pytest.importorskip("sidrepro.teachers.registry")
    entries = list(registry.TEACHERS.values()) + list(getattr(registry, "BASELINES", {}).values())
    checks = run_checks(entries, snapshots_dir=tmp_path, lock_file=None, offline=True, requirements=None,
                        gpu_info=lambda: [])
    by_name(checks)  # every check has its own name, LoRA repos included
    assert all(c.fix for c in checks if c.ok is False)
    gated = [e for e in entries if e.gated and not getattr(e, "zoo", False)]
    assert all(any(c.name == f"{e.name}: token" and c.ok is False for c in checks) for e in gated)
    assert Path(tmp_path).exists() and not any(Path(tmp_path).iterdir())  # the preflight writes nothing


def test_cuda_devices_lists_what_torch_sees():
    torch = pytest.importorskip("torch")
    gpus = doctor.cuda_devices()
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(isinstance(g, GpuInfo) and g.total_mem_gb > 0 for g in gpus)

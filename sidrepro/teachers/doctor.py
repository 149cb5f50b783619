"""Preflight for teachers and baselines: what is missing or will fail before a run starts, each problem with its fix.

``run_checks`` looks at the installed packages against ``env/requirements.txt``, whether the hub answers, and for
every registry entry: its local snapshot, or else the hub access to it (licence, token, revision), the free disk
space for the download, and the GPUs against the entry's memory needs. It returns ``Check`` values;
``format_report`` renders them. Nothing here prints or exits, so the command line decides what to do.

A ``Check`` is tri-state: ``ok=True`` passed, ``ok=False`` failed (``fix`` says what to do), ``ok=None`` skipped or
unknown (``detail`` says why, e.g. the hub is not consulted in offline mode).

Entries are duck-typed on the registry's attribute names: ``name``, ``hub_id``, ``revision``, ``gated`` and, where
present, ``allow_patterns``, ``download_gb``, ``min_gpu_mem_gb`` (baselines lack the last three), ``zoo`` (tiny
offline models: nothing to fetch) and ``lora_id``/``lora_revision``/``lora_weight_name`` (a LoRA repo to fetch too).
Snapshots are looked for in ``default_snapshot_dir(snapshots_dir, hub_id)``. Sizes are decimal GB (1e9 bytes), as
GPU vendors count them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub

DEFAULT_REQUIREMENTS = Path(__file__).resolve().parents[2] / "env" / "requirements.txt"
PROBE_TIMEOUT_S = 5.0
GB = 1e9


@dataclass(frozen=True)
class Check:
    """One preflight result. ``ok``: True passed, False failed, None skipped/unknown. ``fix`` is set on failures."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class GpuInfo:
    """One visible accelerator: its name and total memory in GB (1e9 bytes)."""

    name: str
    total_mem_gb: float


def cuda_devices() -> list[GpuInfo]:
    """The CUDA devices torch sees (empty without a GPU or without a working driver)."""
    import torch  # lazy: seconds to import, and only this check needs it

    if not torch.cuda.is_available():
        return []
    return [GpuInfo(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GB)
            for i in range(torch.cuda.device_count())]


# --------------------------------------------------------------------------------------------------------- packages
def check_packages(requirements: Path = DEFAULT_REQUIREMENTS) -> list[Check]:
    """Installed versions against the pins of ``requirements``: one failing check per mismatch (with the pip
    command that fixes it), or one passing check when all match."""
    from packaging.requirements import InvalidRequirement, Requirement  # huggingface_hub's own dependency

    try:
        lines = Path(requirements).read_text().splitlines()
    except OSError as exc:
        return [Check("packages", None, f"cannot read {requirements}: {exc.strerror}")]
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    checks, count = [], 0
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            checks.append(Check(f"package {line}", None, f"cannot parse {line!r} in {requirements}"))
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        count += 1
        wanted = f"{req.name}{req.specifier}"
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(f"package {req.name}", False, f"not installed; {requirements.name} pins {wanted}",
                                f"{pip} {shlex.quote(wanted)}"))
            continue
        if not req.specifier.contains(installed, prereleases=True):
            checks.append(Check(f"package {req.name}", False,
                                f"{installed} installed; {requirements.name} pins {wanted}",
                                f"{pip} {shlex.quote(wanted)}"))
    if not any(c.ok is False for c in checks):
        checks.insert(0, Check("packages", True, f"all {count} pins of {requirements} are installed"))
    return checks


# -------------------------------------------------------------------------------------------------------------- hub
def check_hub(endpoint: str | None = None, *, offline: bool | None = None, timeout: float = PROBE_TIMEOUT_S) -> Check:
    """Whether the hub answers a cheap API call (``GET /api/models?limit=1``) within ``timeout`` seconds."""
    from huggingface_hub.utils import get_session

    url = hub.resolve_endpoint(endpoint)
    if hub.is_offline() if offline is None else offline:
        return Check("hub", None, "not contacted: offline mode (HF_HUB_OFFLINE); only local snapshots count")
    try:
        status = get_session().get(f"{url}/api/models", params={"limit": 1}, timeout=timeout).status_code
    except Exception as exc:  # any transport failure means "unreachable"; the kind goes in the detail
        why = (str(exc).strip() or "no detail").splitlines()[0]
        return Check("hub", False, f"{url} cannot be reached ({type(exc).__name__}: {why})",
                     "Run the fetch on a machine with network access and copy the snapshot folders here, or fix the "
                     "network/proxy settings (HTTPS_PROXY, HF_ENDPOINT); set HF_HUB_OFFLINE=1 to work from local "
                     "snapshots only.")
    if status >= 500:
        return Check("hub", False, f"{url} answered HTTP {status}", "The hub is having trouble: re-run later.")
    return Check("hub", True, f"{url} answers (HTTP {status})")


def check_token(token: str | bool | None = None) -> Check:
    """Whether a Hugging Face token is available (never shows the token, only where it comes from)."""
    try:
        source = hub.token_source(token)
    except hub.HubError as exc:
        return Check("token", False, exc.problem, exc.fix)
    if source is None:
        return Check("token", None, "no Hugging Face token found: only public repos can be fetched")
    return Check("token", True, f"found ({source})")


def check_lock(lock_file: Path | None) -> Check | None:
    """Whether the lock file is readable and how many repos it pins (None without a lock file)."""
    if lock_file is None:
        return None
    if not Path(lock_file).exists():
        return Check("lock file", None, f"{lock_file} not written yet: the first fetch records each resolved commit")
    try:
        pins = hub.read_lock(lock_file)
    except hub.HubError as exc:
        return Check("lock file", False, exc.problem, exc.fix)
    return Check("lock file", True, f"{lock_file} pins {len(pins)} repo(s)")


# -------------------------------------------------------------------------------------------------------------- gpus
def check_gpus(gpus: Sequence[GpuInfo], needed: int) -> Check:
    """The number of visible GPUs against ``needed`` (0: report only)."""
    listing = ", ".join(f"{g.name} ({g.total_mem_gb:.0f} GB)" for g in gpus)
    if len(gpus) >= needed:
        return Check("gpus", True if gpus or needed else None,
                     f"{len(gpus)} visible: {listing}" if gpus else "no CUDA GPU visible (none needed)")
    seen = f"only {len(gpus)} visible: {listing}" if gpus else "no CUDA GPU visible"
    return Check("gpus", False, f"{needed} needed, {seen}",
                 f"Run on a GPU node with at least {needed} GPU(s) (e.g. through the Slurm profile of the workflow); "
                 f"check CUDA_VISIBLE_DEVICES and that torch is a CUDA build.")


def check_gpu_memory(name: str, need_gb: float, gpus: Sequence[GpuInfo]) -> Check:
    """Whether every visible GPU has ``need_gb`` GB (training shards over all of them)."""
    if not gpus:
        return Check(f"{name}: gpu memory", False, f"needs {need_gb:.0f} GB per GPU; no CUDA GPU visible",
                     f"Run on a GPU node with at least {need_gb:.0f} GB per GPU.")
    smallest = min(gpus, key=lambda g: g.total_mem_gb)
    if smallest.total_mem_gb >= need_gb:
        return Check(f"{name}: gpu memory", True,
                     f"needs {need_gb:.0f} GB per GPU; smallest has {smallest.total_mem_gb:.0f} GB")
    return Check(f"{name}: gpu memory", False,
                 f"needs {need_gb:.0f} GB per GPU; {smallest.name} has {smallest.total_mem_gb:.0f} GB",
                 f"Run on GPUs with at least {need_gb:.0f} GB each, or restrict CUDA_VISIBLE_DEVICES to such GPUs.")


# -------------------------------------------------------------------------------------------------------------- disk
def check_disk(name: str, folder: Path, need_gb: float) -> Check:
    """Free space on the disk that holds (or will hold) ``folder`` against ``need_gb``."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free_gb = shutil.disk_usage(existing).free / GB
    if need_gb <= 0:
        return Check(f"{name}: disk", None, f"download size unknown; {free_gb:.1f} GB free under {existing}")
    if free_gb >= need_gb:
        return Check(f"{name}: disk", True, f"{free_gb:.1f} GB free under {existing}, {need_gb:.1f} GB needed")
    return Check(f"{name}: disk", False, f"{free_gb:.1f} GB free under {existing}, {need_gb:.1f} GB needed",
                 f"Free at least {need_gb - free_gb:.1f} GB there, or point snapshots_dir at a disk with "
                 f"{need_gb:.1f} GB free.")


# ----------------------------------------------------------------------------------------------------------- entries
def _repos(entry: Any) -> list[tuple[str, str, str, list[str] | None]]:
    """(check-name suffix, repo id, revision, allow_patterns) of every repo an entry needs."""
    patterns = getattr(entry, "allow_patterns", None)
    repos = [("", entry.hub_id, entry.revision, list(patterns) if patterns else None)]
    lora = getattr(entry, "lora_id", "")
    if lora:
        weight = getattr(entry, "lora_weight_name", "")
        repos.append((f" (LoRA {lora})", lora, getattr(entry, "lora_revision", "main"), [weight] if weight else None))
    return repos


def _entry_checks(entry: Any, *, snapshots_dir: Path, lock_file: Path | None, endpoint: str | None,
                  hub_up: bool, offline: bool, token: str | bool | None, timeout: float,
                  cache: dict[tuple, Any]) -> list[Check]:
    name = entry.name
    if getattr(entry, "zoo", False):
        return [Check(f"{name}: snapshot", None, "tiny zoo model built offline by `sidrepro zoo`; nothing to fetch")]
    checks: list[Check] = []
    need_gb, missing_any = 0.0, False  # download size of the repos that are not local yet
    for suffix, repo_id, revision, patterns in _repos(entry):
        dest = hub.default_snapshot_dir(snapshots_dir, repo_id)
        fetch = f"Run `sidrepro fetch` for {name} ({repo_id}@{revision}) into {dest}."
        try:
            commit = hub.pinned_commit(repo_id, revision, lock_file)
        except hub.HubError as exc:  # a lock mismatch or an unreadable lock file
            checks.append(Check(f"{name}: snapshot{suffix}", False, exc.problem, exc.fix))
            continue
        if commit is None and hub.is_commit_hash(revision):
            commit = revision
        snapshot, reason = hub.verify_snapshot(dest, repo_id=repo_id, commit=commit, allow_patterns=patterns)
        if snapshot is not None and commit is None and (hub.read_marker(dest) or {}).get("requested") != revision:
            snapshot, reason = None, f"{dest} was fetched for another revision than {revision!r}"
        if snapshot is not None:
            checks.append(Check(f"{name}: snapshot{suffix}", True,
                                f"complete in {dest} (commit {snapshot.commit[:12]}, {len(snapshot.files)} files)"))
            continue
        missing_any = True
        checks.append(Check(f"{name}: snapshot{suffix}", False, reason, fetch))

        # Nothing local: will the fetch work? Token first (no network), then the hub itself.
        gated = bool(getattr(entry, "gated", False)) and not suffix  # `gated` describes the base model
        if gated:
            source = None
            with contextlib.suppress(hub.HubError):  # token=True without a token: reported as "no token" here
                source = hub.token_source(token)
            page = f"{hub.HUB_WEB}/{repo_id}"
            checks.append(Check(f"{name}: token", True, f"{repo_id} is gated; token found ({source})") if source else
                          Check(f"{name}: token", False, f"{repo_id} is gated and no Hugging Face token was found",
                                f"Accept the licence at {page}, then log in with `hf auth login` or set HF_TOKEN."))
        key = (repo_id, commit or revision, tuple(patterns or ()))
        if offline or not hub_up:
            why = "offline mode" if offline else "the hub cannot be reached"
            checks.append(Check(f"{name}: access{suffix}", None, f"not checked: {why}"))
            remote = None
        else:
            if key not in cache:
                try:
                    cache[key] = hub.remote_snapshot(repo_id, commit or revision, allow_patterns=patterns,
                                                     token=token, endpoint=endpoint, timeout=timeout)
                except hub.HubError as exc:
                    cache[key] = exc
            remote = cache[key]
            if isinstance(remote, hub.HubError):
                checks.append(Check(f"{name}: access{suffix}", False, remote.problem, remote.fix))
                remote = None
            else:
                granted = "; access granted" if remote.gated else ""
                checks.append(Check(f"{name}: access{suffix}", True,
                                    f"{repo_id}@{revision} is commit {remote.commit[:12]}: {len(remote.files)} files, "
                                    f"{remote.size_bytes / GB:.2f} GB{granted}"))
        # The registry's estimate covers the base model; a LoRA's size is only known from the hub.
        declared = 0.0 if suffix else float(getattr(entry, "download_gb", 0.0) or 0.0)
        need_gb += declared or (remote.size_bytes / GB if remote is not None else 0.0)
    if missing_any:
        checks.append(check_disk(name, snapshots_dir, need_gb))
    return checks


def run_checks(entries: Sequence[Any], *, snapshots_dir: Path, lock_file: Path | None, endpoint: str | None = None,
               offline: bool | None = None, gpus_needed: int | None = None, token: str | bool | None = None,
               requirements: Path | None = DEFAULT_REQUIREMENTS,
               gpu_info: Callable[[], Sequence[GpuInfo]] | None = cuda_devices,
               timeout: float = PROBE_TIMEOUT_S) -> list[Check]:
    """Every preflight check for ``entries`` (teachers and baselines of the registry, duck-typed).

    ``offline=None`` follows ``HF_HUB_OFFLINE``; ``gpus_needed=None`` asks for one GPU when an entry needs GPU
    memory. ``requirements=None`` skips the package check, ``gpu_info=None`` the GPU checks; tests pass a function
    returning fake ``GpuInfo`` values. Returns the checks in report order; nothing is printed.
    """
    snapshots_dir = Path(snapshots_dir)
    offline = hub.is_offline() if offline is None else offline
    checks: list[Check] = []
    if requirements is not None:
        checks += check_packages(requirements)
    hub_check = check_hub(endpoint, offline=offline, timeout=timeout)
    checks += [hub_check, check_token(token)]
    lock_check = check_lock(lock_file)
    if lock_check is not None:
        checks.append(lock_check)

    gpus: Sequence[GpuInfo] = []
    if gpu_info is not None:
        try:
            gpus = list(gpu_info())
        except Exception as exc:  # a broken driver or CPU-only torch is a finding, not a crash
            checks.append(Check("gpus", False, f"cannot query the GPUs ({type(exc).__name__}: {exc})",
                                "Check the NVIDIA driver (nvidia-smi) and that torch is a CUDA build."))
            gpu_info = None
        else:
            mem_needed = any(getattr(e, "min_gpu_mem_gb", 0) for e in entries)
            checks.append(check_gpus(gpus, gpus_needed if gpus_needed is not None else int(bool(mem_needed))))

    cache: dict[tuple, Any] = {}
    for entry in entries:
        checks += _entry_checks(entry, snapshots_dir=snapshots_dir, lock_file=lock_file, endpoint=endpoint,
                                hub_up=hub_check.ok is True, offline=offline, token=token, timeout=timeout,
                                cache=cache)
        need = float(getattr(entry, "min_gpu_mem_gb", 0.0) or 0.0)
        if gpu_info is not None and need > 0:
            checks.append(check_gpu_memory(entry.name, need, gpus))
    return checks


def failures(checks: Sequence[Check]) -> list[Check]:
    """The failed checks (``ok is False``); empty means the preflight passed."""
    return [c for c in checks if c.ok is False]


def format_report(checks: Sequence[Check]) -> str:
    """A plain-text report: one line per check, the fix indented under each failure, and a summary line."""
    tags = {True: "[ ok ]", False: "[FAIL]", None: "[skip]"}
    lines = []
    for check in checks:
        lines.append(f"{tags[check.ok]} {check.name}: {check.detail}")
        if check.ok is False and check.fix:
            lines.append(f"       fix: {check.fix}")
    passed = sum(c.ok is True for c in checks)
    failed = sum(c.ok is False for c in checks)
    lines.append(f"{len(checks)} checks: {passed} passed, {failed} failed, {len(checks) - passed - failed} skipped")
    return "\n".join(lines)

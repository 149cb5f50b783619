"""Pinned snapshots of Hugging Face hub repos in plain local folders that diffusers loads with
``from_pretrained(folder)``.

``fetch_snapshot`` resolves a revision (branch, tag or 40-hex commit) to a commit, records it in a JSON lock file
(``{repo_id: {"requested": revision, "commit": sha}}``) so that every later fetch gets that exact commit, downloads
with ``huggingface_hub.snapshot_download`` into a temporary folder beside the destination, checks that every file
the hub listed arrived with the size the hub gave, writes a marker (``.sidrepro-snapshot.json``: repo, commit, files
and sizes) and only then renames the folder into place. A folder with a matching marker is reused without any
network access, which is also how a machine without network uses a snapshot copied from one that has it.
Dataset repos (``repo_type="dataset"``, e.g. the midjourney-v6-llava shards) go through the same code; their lock
entries are keyed ``datasets/owner/name`` so that a model and a dataset of the same id never share a pin.

Every failure is a ``HubError`` whose message names the problem and the fix (``.problem`` and ``.fix`` hold the two
parts). The access token is never printed, logged or written: not to the marker, the lock file, log records,
exception messages or their chained causes (errors are raised outside the ``except`` block that caught the library
error, so no request object carrying the ``Authorization`` header hangs off a traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import filter_repo_objects

from ..atomic import write_json_atomic

logger = logging.getLogger(__name__)

MARKER_NAME = ".sidrepro-snapshot.json"
MARKER_FORMAT = 1
HUB_WEB = "https://huggingface.co"  # model pages, licences and tokens live here even when HF_ENDPOINT is a mirror
HUB_TIMEOUT_S = 10.0  # metadata calls only; file downloads use huggingface_hub's own timeouts and retries
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
REPO_TYPES = ("model", "dataset")
# The command that fetches each kind of repo, named in error fixes.
_FETCH_CMD = {"model": "sidrepro fetch", "dataset": "sidrepro fetch-dataset"}


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")


def repo_page(repo_id: str, repo_type: str = "model") -> str:
    """The hub web page of a repo (datasets live under ``/datasets/``)."""
    return f"{HUB_WEB}/datasets/{repo_id}" if repo_type == "dataset" else f"{HUB_WEB}/{repo_id}"


def lock_key(repo_id: str, repo_type: str = "model") -> str:
    """The lock file key of a repo: the id for a model (as before), ``datasets/owner/name`` for a dataset."""
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


# ---------------------------------------------------------------------------------------------------------- errors
class HubError(RuntimeError):
    """A hub or snapshot problem. ``problem`` says what is wrong, ``fix`` what to do; ``str()`` gives both."""

    def __init__(self, problem: str, fix: str = "", *, repo_id: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        self.repo_id = repo_id
        super().__init__(f"{problem}\nFix: {fix}" if fix else problem)


class HubOfflineError(HubError):
    """The hub cannot be reached (offline mode, refused connection, timeout, hub down) and no usable local
    snapshot exists; ``cause`` says why in a few words."""

    def __init__(self, problem: str, fix: str = "", *, repo_id: str | None = None, cause: str = ""):
        super().__init__(problem, fix, repo_id=repo_id)
        self.cause = cause


class GatedRepoError(HubError):
    """The repo is gated and the request carried no token, or a token whose account has no access."""

    def __init__(self, problem: str, fix: str = "", *, repo_id: str | None = None, token_present: bool = False):
        super().__init__(problem, fix, repo_id=repo_id)
        self.token_present = token_present


class RepoNotFoundError(HubError):
    """No such repo, or a private one the token cannot see."""


class RevisionNotFoundError(HubError):
    """The repo exists but has no branch, tag or commit of that name."""


class IncompleteSnapshotError(HubError):
    """Files the hub listed are missing or truncated after a download; ``missing`` lists them."""

    def __init__(self, problem: str, fix: str = "", *, repo_id: str | None = None, missing: Sequence[str] = ()):
        super().__init__(problem, fix, repo_id=repo_id)
        self.missing = tuple(missing)


class LockMismatchError(HubError):
    """The requested revision disagrees with the commit the lock file pins."""


class InvalidTokenError(HubError):
    """The hub rejected the token itself (invalid, expired or revoked)."""


# ------------------------------------------------------------------------------------------------------ data types
@dataclass(frozen=True)
class Snapshot:
    """A complete local snapshot: ``path`` holds ``files`` (repo-relative, sorted) of ``repo_id`` at ``commit``."""

    repo_id: str
    commit: str
    path: Path
    files: tuple[str, ...]


@dataclass(frozen=True)
class RemoteSnapshot:
    """What the hub says a fetch would download: the commit ``revision`` resolves to and the files (repo-relative
    path -> size in bytes, None where the hub gave none) that ``allow_patterns`` selects."""

    repo_id: str
    revision: str
    commit: str
    files: dict[str, int | None]
    gated: bool

    @property
    def size_bytes(self) -> int:
        """Total size of the selected files (files of unknown size count 0)."""
        return sum(size or 0 for size in self.files.values())


# ---------------------------------------------------------------------------------------------- tokens and offline
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """True where huggingface_hub's offline mode is on or ``HF_HUB_OFFLINE`` is set now (the library reads the
    variable once, at import)."""
    return constants.is_offline_mode() or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The hub URL to talk to: ``endpoint``, else ``HF_ENDPOINT`` (read now), else huggingface_hub's default."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token_and_source(token: str | bool | None) -> tuple[str | None, str | None]:
    if isinstance(token, str):
        return (token.strip(), "the token argument") if token.strip() else (None, None)
    if token is False:
        return None, None
    env = (os.environ.get("HF_TOKEN") or "").strip()
    if env:
        return env, "HF_TOKEN"
    try:
        stored = get_token()
    except Exception:  # an OIDC or Colab look-up that fails means "no token", not a crash
        stored = None
    if stored:
        return stored, "huggingface_hub's stored login"
    if token is True:
        raise HubError("A Hugging Face token was required (token=True) but none was found.",
                       "Log in with `hf auth login` or set HF_TOKEN to a read token.")
    return None, None


def resolve_token(token: str | bool | None = None) -> str | None:
    """The token to send: an explicit string first, then ``HF_TOKEN``, then huggingface_hub's stored login
    (``hf auth login``). ``False`` means anonymous; ``True`` raises ``HubError`` if no token is found."""
    return _token_and_source(token)[0]


def token_source(token: str | bool | None = None) -> str | None:
    """Where ``resolve_token`` finds its token, in words ("HF_TOKEN", ...), or None without a token. Never the
    token itself."""
    return _token_and_source(token)[1]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# ----------------------------------------------------------------------------------------------- error translation
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _offline_error(repo_id: str, revision: str, cause: str, *, endpoint: str, dest: Path | None = None,
                   local_reason: str = "", repo_type: str = "model") -> HubOfflineError:
    where = f" and {dest} holds no usable snapshot ({local_reason})" if dest is not None else ""
    problem = (f"This machine cannot reach the Hugging Face Hub at {endpoint} ({cause}), so {repo_id}@{revision} "
               f"cannot be fetched{where}.")
    target = str(dest) if dest is not None else "the snapshot folder"
    fix = (f"Run `{_FETCH_CMD[repo_type]}` on a machine with network access and copy the snapshot folder (with its "
           f"{MARKER_NAME}) to {target}, or point the config at an existing local snapshot folder of {repo_id}.")
    if is_offline():
        fix += " If this machine does have network, unset HF_HUB_OFFLINE."
    else:
        fix += " If this machine should have network, check the proxy settings and HF_ENDPOINT."
    return HubOfflineError(problem, fix, repo_id=repo_id, cause=cause)


def _gated_error(repo_id: str, status: int | None, source: str | None, repo_type: str = "model"
                 ) -> GatedRepoError:
    page = repo_page(repo_id, repo_type)
    http = f" (HTTP {status})" if status else ""
    if source is None:
        return GatedRepoError(
            f"{repo_id} is a gated {repo_type} and no Hugging Face token was found, so the hub refused the "
            f"download{http}.",
            f"Open {page}, log in and accept the licence there; then log in on this machine with `hf auth login` "
            f"or set HF_TOKEN to a read token of that account, and re-run.",
            repo_id=repo_id, token_present=False)
    return GatedRepoError(
        f"{repo_id} is a gated {repo_type} and the token in use (from {source}) has not been granted access{http}: its "
        f"account has not accepted the licence, or the access request is still pending.",
        f"Open {page} with the account the token belongs to and accept the licence (some repos approve requests "
        f"by hand: wait for the e-mail), or use a token of an account that has access (`hf auth login` or "
        f"HF_TOKEN).",
        repo_id=repo_id, token_present=True)


def _translate(exc: BaseException, *, repo_id: str, revision: str, endpoint: str, token: str | None,
               source: str | None, repo_type: str = "model") -> HubError | None:
    """Map a huggingface_hub / httpx2 exception onto a ``HubError``; None for anything unexpected."""
    if isinstance(exc, HubError):
        return exc
    fetch_cmd = _FETCH_CMD[repo_type]
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return _offline_error(repo_id, revision, "HF_HUB_OFFLINE is set", endpoint=endpoint, repo_type=repo_type)
    if isinstance(exc, httpx2.ProxyError):
        return _offline_error(repo_id, revision, _scrub(f"proxy error: {_first_line(exc)}", token), endpoint=endpoint,
                              repo_type=repo_type)
    if isinstance(exc, httpx2.TimeoutException):
        return _offline_error(repo_id, revision, "the request timed out", endpoint=endpoint, repo_type=repo_type)
    if isinstance(exc, (httpx2.TransportError, ConnectionError)):
        return _offline_error(repo_id, revision, _scrub(_first_line(exc), token), endpoint=endpoint,
                              repo_type=repo_type)
    if isinstance(exc, hf_errors.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        response = exc.response
        status, code = response.status_code, response.headers.get("X-Error-Code")
        message = response.headers.get("X-Error-Message") or ""
        if (code == "GatedRepo" or isinstance(exc, hf_errors.GatedRepoError)
                or (status in (401, 403) and any(w in message.lower() for w in ("gated", "restricted")))):
            return _gated_error(repo_id, status, source, repo_type)
        if code == "RevisionNotFound" or isinstance(exc, hf_errors.RevisionNotFoundError):
            return RevisionNotFoundError(
                f"Revision {revision!r} does not exist in {repo_id} (HTTP {status}): no branch, tag or commit has "
                f"that name.",
                f"Check the revision in the registry entry (or config) and the lock file against "
                f"{repo_page(repo_id, repo_type)}/commits/main "
                f"(a commit hash needs all 40 hex characters); if the pinned commit was removed from the repo, pick a "
                f"current one and re-run the fetch with --update-lock.",
                repo_id=repo_id)
        if code == "EntryNotFound" or isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            name = str(response.request.url).rsplit("/resolve/", 1)[-1].split("/", 1)[-1]
            return IncompleteSnapshotError(
                f"The hub listed {name} in {repo_id}@{revision} but answered 404 when it was downloaded, so the "
                f"snapshot is incomplete.",
                f"Re-run the fetch (`{fetch_cmd}`); if it keeps failing the repo changed under the pinned commit: "
                "re-run with --update-lock.",
                repo_id=repo_id, missing=(name,))
        if status == 401 and message == "Invalid credentials in Authorization header":
            return InvalidTokenError(
                f"The hub rejected the Hugging Face token in use (from {source}): it is invalid, expired or revoked.",
                f"Create a read token at {HUB_WEB}/settings/tokens and log in with `hf auth login` (or set HF_TOKEN), "
                f"then re-run.",
                repo_id=repo_id)
        if code == "RepoNotFound" or isinstance(exc, hf_errors.RepositoryNotFoundError) or status in (401, 404):
            seen_by = "the token in use cannot see it" if token else "no token was sent"
            return RepoNotFoundError(
                f"The hub has no {repo_type} repo {repo_id!r} (HTTP {status}), or it is private and {seen_by}.",
                f"Check the hub id for typos (owner/name, case-sensitive) at {repo_page(repo_id, repo_type)}; if "
                f"the repo is private, log in with `hf auth login` or set HF_TOKEN to a token that can read it.",
                repo_id=repo_id)
        if status >= 500 or status == 429:
            return _offline_error(repo_id, revision, f"the hub answered HTTP {status}", endpoint=endpoint,
                                  repo_type=repo_type)
        return HubError(f"The hub answered HTTP {status} for {repo_id}@{revision}: "
                        f"{_scrub(message or _first_line(exc), token)}",
                        "Check the repo id, revision and token; re-run later if the hub is having trouble.",
                        repo_id=repo_id)
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):  # snapshot_download lost the hub mid-way
        return _offline_error(repo_id, revision, _scrub(_first_line(exc), token), endpoint=endpoint,
                              repo_type=repo_type)
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return IncompleteSnapshotError(
            f"A file of {repo_id}@{revision} arrived with another size than the hub announced "
            f"({_scrub(_first_line(exc), token)}).",
            f"Re-run the fetch (`{fetch_cmd}`); files that arrived whole are kept.", repo_id=repo_id)
    return None


def _call(fn: Callable[[], Any], ctx: dict[str, Any]) -> Any:
    """Run a huggingface_hub call; raise its error as a ``HubError`` (``ctx``: the keywords of ``_translate``)
    with no chained library exception."""
    error: HubError | None = None
    try:
        return fn()
    except Exception as exc:
        error = _translate(exc, **ctx)
        if error is None:
            raise
    raise error  # outside the except block: no __context__ pointing at a request with the Authorization header


# -------------------------------------------------------------------------------------------------- remote look-up
def is_commit_hash(revision: str) -> bool:
    """True for a full 40-hex commit id (the only revision that cannot move)."""
    return _COMMIT_RE.fullmatch(revision) is not None


def _patterns(allow_patterns: Sequence[str] | str | None) -> list[str] | None:
    if allow_patterns is None:
        return None
    if isinstance(allow_patterns, str):
        return [allow_patterns]
    return sorted(set(allow_patterns))


def remote_snapshot(repo_id: str, revision: str, *, allow_patterns: Sequence[str] | None = None,
                    token: str | bool | None = None, endpoint: str | None = None,
                    timeout: float = HUB_TIMEOUT_S, repo_type: str = "model") -> RemoteSnapshot:
    """Ask the hub what ``revision`` of ``repo_id`` resolves to and which files (with sizes) ``allow_patterns``
    selects. For a gated repo it also checks, with a HEAD request on one file, that the token may download.

    ``repo_type`` is ``"model"`` or ``"dataset"``. Raises the ``HubError`` subclasses; never downloads file
    contents.
    """
    _check_repo_type(repo_type)
    endpoint = resolve_endpoint(endpoint)
    tok, source = _token_and_source(token)
    ctx = dict(repo_id=repo_id, revision=revision, endpoint=endpoint, token=tok, source=source, repo_type=repo_type)
    if is_offline():
        raise _offline_error(repo_id, revision, "HF_HUB_OFFLINE is set", endpoint=endpoint, repo_type=repo_type)
    api = HfApi(endpoint=endpoint)
    info_fn = api.dataset_info if repo_type == "dataset" else api.model_info
    info = _call(lambda: info_fn(repo_id, revision=revision, files_metadata=True, token=tok or False,
                                 timeout=timeout), ctx)
    if not info.sha or info.siblings is None:
        raise HubError(f"The hub's answer for {repo_id}@{revision} lacks the commit or the file list.",
                       f"Check that {endpoint} is a Hugging Face Hub endpoint (HF_ENDPOINT).", repo_id=repo_id)
    patterns = _patterns(allow_patterns)
    selected = list(filter_repo_objects(info.siblings, allow_patterns=patterns, key=lambda s: s.rfilename))
    if not selected:
        raise HubError(f"No file of {repo_id}@{info.sha[:12]} matches allow_patterns {patterns}.",
                       "Fix the allow_patterns of the registry entry (globs on repo paths, e.g. 'transformer/*').",
                       repo_id=repo_id)
    files = {s.rfilename: s.size for s in sorted(selected, key=lambda s: s.rfilename)}
    gated = bool(info.gated)
    if gated:  # the metadata of a gated repo is public; only a file request shows whether the token may download
        url = hf_hub_url(repo_id, next(iter(files)), revision=info.sha, endpoint=endpoint, repo_type=repo_type)
        _call(lambda: get_hf_file_metadata(url, token=tok or False, timeout=timeout, endpoint=endpoint), ctx)
    return RemoteSnapshot(repo_id=repo_id, revision=revision, commit=info.sha, files=files, gated=gated)


# ----------------------------------------------------------------------------------------------------- lock file
def read_lock(lock_file: Path | None) -> dict[str, dict[str, str]]:
    """The lock file's entries (``{repo_id: {"requested": ..., "commit": ...}}``); empty if there is no file."""
    if lock_file is None or not Path(lock_file).exists():
        return {}
    try:
        data = json.loads(Path(lock_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HubError(f"Cannot read the lock file {lock_file}: {exc}.",
                       "Repair the JSON (restore it from version control) or delete the file to re-resolve every "
                       "revision.") from None
    bad = not isinstance(data, dict) or any(
        not isinstance(v, dict) or not is_commit_hash(str(v.get("commit", ""))) for v in data.values())
    if bad:
        raise HubError(f"The lock file {lock_file} is not a mapping of repo id -> {{requested, commit}} with 40-hex "
                       f"commits.", "Restore it from version control or delete the bad entries.")
    return data


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file between processes (parallel fetch jobs)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the file whole
        yield
        return
    with open(lock_file.parent / f".{lock_file.name}.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_lock(lock_file: Path, repo_id: str, requested: str, commit: str, *, repo_type: str = "model") -> None:
    """Set ``repo_id``'s entry (``lock_key``) in ``lock_file`` (created if missing), keeping the other entries;
    atomic."""
    repo_id = lock_key(repo_id, repo_type)
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(lock_file):
        data = read_lock(lock_file)
        if data.get(repo_id) == {"requested": requested, "commit": commit}:
            return
        data[repo_id] = {"requested": requested, "commit": commit}
        write_json_atomic(lock_file, data)


def pinned_commit(repo_id: str, revision: str, lock_file: Path | None, *, update_lock: bool = False,
                  repo_type: str = "model") -> str | None:
    """The commit ``lock_file`` pins for ``repo_id`` when ``revision`` is the revision it was recorded for (or that
    commit); None without an entry (or with ``update_lock``). Raises ``LockMismatchError`` for another revision."""
    if lock_file is None or update_lock:
        return None
    entry = read_lock(lock_file).get(lock_key(repo_id, repo_type))
    if entry is None:
        return None
    locked, requested = entry["commit"], entry.get("requested", entry["commit"])
    if revision in (locked, requested):
        return locked
    raise LockMismatchError(
        f"{repo_id}: revision {revision!r} was requested but {lock_file} pins commit {locked} (recorded for "
        f"{requested!r}).",
        f"To move to the new revision, delete the {lock_key(repo_id, repo_type)!r} entry from {lock_file} or re-run "
        f"the fetch with --update-lock (update_lock=True); to keep the pinned snapshot, request {requested!r}.",
        repo_id=repo_id)


# ----------------------------------------------------------------------------------------------- local snapshots
def default_snapshot_dir(snapshots_dir: Path, repo_id: str) -> Path:
    """The folder ``sidrepro`` keeps ``repo_id``'s snapshot in: ``snapshots_dir/owner--name``."""
    return Path(snapshots_dir) / repo_id.replace("/", "--")


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of the snapshot folder ``path``, or None if it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(path) / MARKER_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    keys = {"repo_id", "commit", "files"}
    return marker if isinstance(marker, dict) and keys <= marker.keys() and isinstance(marker["files"], dict) else None


def _bad_files(base: Path, files: Mapping[str, int | None]) -> list[str]:
    """Files of ``files`` absent under ``base`` or of another size, described for a message."""
    bad = []
    for name, size in sorted(files.items()):
        file = base.joinpath(*name.split("/"))
        if not file.is_file():
            bad.append(f"{name} (missing)")
        elif size is not None and file.stat().st_size != size:
            bad.append(f"{name} ({file.stat().st_size} of {size} bytes)")
    return bad


def _drop_bad_files(base: Path, files: Mapping[str, int | None]) -> None:
    """Delete files of the wrong size under ``base``: huggingface_hub's local-dir resume trusts any file that
    exists for the commit, so a truncated one would never be fetched again."""
    for name, size in files.items():
        file = base.joinpath(*name.split("/"))
        if size is not None and file.is_file() and file.stat().st_size != size:
            file.unlink()


def _listing(items: Sequence[str], limit: int = 5) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def verify_snapshot(path: Path, *, repo_id: str, commit: str | None = None,
                    allow_patterns: Sequence[str] | None = None, repo_type: str = "model"
                    ) -> tuple[Snapshot | None, str]:
    """Check the local snapshot folder ``path`` without network: ``(Snapshot, "")`` if its marker names
    ``repo_id`` (and ``commit``, when given) fetched with ``allow_patterns`` and every listed file is there with
    its size; else ``(None, reason)``."""
    path = Path(path)
    if not path.is_dir():
        return None, f"{path} does not exist"
    marker = read_marker(path)
    if marker is None:
        return None, f"{path} has no {MARKER_NAME} (not a finished `sidrepro fetch`)"
    if marker["repo_id"] != repo_id:
        return None, f"{path} holds a snapshot of {marker['repo_id']}, not {repo_id}"
    if marker.get("repo_type", "model") != repo_type:  # markers written before datasets were supported: models
        return None, f"{path} holds the {marker.get('repo_type', 'model')} repo {repo_id}, not the {repo_type} repo"
    if commit is not None and marker["commit"] != commit:
        return None, f"{path} holds commit {marker['commit']}, not the pinned {commit}"
    if _patterns(marker.get("allow_patterns")) != _patterns(allow_patterns):
        return None, f"{path} was fetched with allow_patterns {marker.get('allow_patterns')}, not {allow_patterns}"
    bad = _bad_files(path, marker["files"])
    if bad:
        return None, f"{path} misses {len(bad)} file(s): {_listing(bad)}"
    return Snapshot(repo_id, marker["commit"], path, tuple(sorted(marker["files"]))), ""


def _check_dest(dest: Path, repo_id: str, repo_type: str = "model") -> None:
    """Refuse to replace a folder that is not an earlier snapshot of the same repo."""
    if not dest.exists():
        return
    marker = read_marker(dest) if dest.is_dir() else None
    same = marker is not None and marker["repo_id"] == repo_id and marker.get("repo_type", "model") == repo_type
    if dest.is_dir() and (not any(dest.iterdir()) or same):
        return
    what = f"a snapshot of {marker['repo_id']}" if marker else f"no {MARKER_NAME}"
    raise HubError(f"{dest} exists and is not a sidrepro snapshot of {repo_id} ({what}); it will not be replaced.",
                   "Choose another destination folder, or delete or move that one.", repo_id=repo_id)


def _move_into_place(tmp: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


# ------------------------------------------------------------------------------------------------------- fetching
def fetch_snapshot(repo_id: str, revision: str, dest: Path, *, allow_patterns: Sequence[str] | None = None,
                   lock_file: Path | None = None, token: str | bool | None = None, endpoint: str | None = None,
                   update_lock: bool = False, timeout: float = HUB_TIMEOUT_S, max_workers: int = 8,
                   repo_type: str = "model") -> Snapshot:
    """Make ``dest`` a complete snapshot of ``repo_id`` at ``revision`` and return it.

    ``revision`` is a branch, tag or 40-hex commit. With ``lock_file``, the first fetch records the commit the
    revision resolves to and later fetches get that commit; a different revision raises ``LockMismatchError``
    unless ``update_lock`` re-resolves it. A complete ``dest`` for the commit is returned without network; offline
    (or with the hub unreachable) a complete ``dest`` for the same repo and revision is used as it is.
    ``allow_patterns`` selects files as in ``huggingface_hub.snapshot_download``; ``token`` as in
    ``resolve_token``; ``endpoint`` defaults to ``HF_ENDPOINT``; ``repo_type`` is ``"model"`` or ``"dataset"``.

    Raises ``HubOfflineError``, ``GatedRepoError``, ``RepoNotFoundError``, ``RevisionNotFoundError``,
    ``IncompleteSnapshotError``, ``LockMismatchError``, ``InvalidTokenError`` or ``HubError``.
    """
    _check_repo_type(repo_type)
    dest = Path(dest).expanduser().absolute()
    endpoint = resolve_endpoint(endpoint)
    patterns = _patterns(allow_patterns)
    lock_file = Path(lock_file) if lock_file is not None else None
    pinned = pinned_commit(repo_id, revision, lock_file, update_lock=update_lock, repo_type=repo_type)
    kind = dict(repo_type=repo_type)
    target = pinned or (revision if is_commit_hash(revision) else None)

    def done(snapshot: Snapshot) -> Snapshot:
        if lock_file is not None and (pinned is None or update_lock):
            record_lock(lock_file, repo_id, revision, snapshot.commit, **kind)
        return snapshot

    if target is not None:
        snapshot, _ = verify_snapshot(dest, repo_id=repo_id, commit=target, allow_patterns=patterns, **kind)
        if snapshot is not None:
            logger.info("Using the complete snapshot of %s@%s in %s", repo_id, target[:12], dest)
            return done(snapshot)

    unreachable: HubOfflineError | None = None
    try:
        remote = remote_snapshot(repo_id, target or revision, allow_patterns=patterns, token=token,
                                 endpoint=endpoint, timeout=timeout, **kind)
    except HubOfflineError as exc:
        unreachable = exc
    if unreachable is not None:  # handled outside the except block: no chained exceptions on what it raises
        return done(_local_fallback(repo_id, revision, dest, target, patterns, update_lock, unreachable, endpoint,
                                    repo_type))
    commit = remote.commit
    if lock_file is not None and (pinned is None or update_lock):
        # Pin before downloading, so that a re-run resumes this commit.
        record_lock(lock_file, repo_id, revision, commit, **kind)

    snapshot, _ = verify_snapshot(dest, repo_id=repo_id, commit=commit, allow_patterns=patterns, **kind)
    if snapshot is not None:
        return snapshot
    _check_dest(dest, repo_id, repo_type)

    # Partial downloads stay in a per-commit folder beside dest: a re-run resumes it, dest never holds half a repo.
    tmp = dest.parent / f".{dest.name}.{commit[:12]}.partial"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _drop_bad_files(tmp, remote.files)  # huggingface_hub would keep a truncated file from an earlier run
    tok, source = _token_and_source(token)
    ctx = dict(repo_id=repo_id, revision=revision, endpoint=endpoint, token=tok, source=source, repo_type=repo_type)
    _call(lambda: snapshot_download(repo_id, revision=commit, local_dir=tmp, allow_patterns=patterns,
                                    token=tok or False, endpoint=endpoint, max_workers=max_workers,
                                    repo_type=repo_type), ctx)
    bad = _bad_files(tmp, remote.files)
    if bad:
        _drop_bad_files(tmp, remote.files)  # so that the re-run the message asks for downloads them again
        raise IncompleteSnapshotError(
            f"The download of {repo_id}@{commit[:12]} is incomplete: {len(bad)} file(s) missing or truncated: "
            f"{_listing(bad)}.",
            f"Re-run the fetch (`{_FETCH_CMD[repo_type]}`): the files that arrived whole stay in {tmp} and only the "
            f"rest is downloaded. If it keeps failing, check the free disk space and the network.",
            repo_id=repo_id, missing=[b.split(" (")[0] for b in bad])
    marker = {"format": MARKER_FORMAT, "repo_id": repo_id, "repo_type": repo_type, "requested": revision,
              "commit": commit,
              "allow_patterns": patterns, "files": remote.files}
    write_json_atomic(tmp / MARKER_NAME, marker)  # written last: its presence means "complete"
    _move_into_place(tmp, dest)
    logger.info("Fetched %s@%s (%d files) into %s", repo_id, commit[:12], len(remote.files), dest)
    return Snapshot(repo_id, commit, dest, tuple(sorted(remote.files)))


def _local_fallback(repo_id: str, revision: str, dest: Path, target: str | None, patterns: list[str] | None,
                    update_lock: bool, error: HubOfflineError, endpoint: str, repo_type: str = "model") -> Snapshot:
    """Without the hub: use ``dest`` if it is a complete snapshot of the same repo and revision, else explain."""
    marker = read_marker(dest)
    commit = target
    if commit is None and not update_lock and marker is not None and marker.get("requested") == revision:
        commit = marker["commit"]  # the branch cannot be re-resolved offline: take the commit fetched for it
    if commit is None:
        reason = verify_snapshot(dest, repo_id=repo_id, allow_patterns=patterns, repo_type=repo_type)[1]
        if update_lock:
            reason = f"--update-lock needs the hub to re-resolve {revision!r}"
        elif not reason:  # a complete snapshot, but of another revision
            reason = f"{dest} was fetched for revision {marker.get('requested')!r}, not {revision!r}"
    else:
        snapshot, reason = verify_snapshot(dest, repo_id=repo_id, commit=commit, allow_patterns=patterns,
                                           repo_type=repo_type)
        if snapshot is not None:
            logger.warning("The hub cannot be reached; using the local snapshot of %s@%s in %s", repo_id,
                           commit[:12], dest)
            return snapshot
    raise _offline_error(repo_id, revision, error.cause, endpoint=endpoint, dest=dest, local_reason=reason,
                         repo_type=repo_type)


# ------------------------------------------------------------------------------------- single files, hub cache
def download_to_cache(repo_id: str, filename: str, commit: str, cache_dir: Path, *, size: int | None = None,
                      token: str | bool | None = None, endpoint: str | None = None,
                      repo_type: str = "model") -> Path:
    """Download one file of ``repo_id`` at the 40-hex ``commit`` into the Hugging Face cache layout under
    ``cache_dir`` (what libraries that call ``hf_hub_download`` themselves, such as open_clip, look in) and return
    its path. ``size`` (bytes, from ``remote_snapshot``) is checked after the download. Raises the ``HubError``
    subclasses, with the same messages as ``fetch_snapshot``."""
    _check_repo_type(repo_type)
    if not is_commit_hash(commit):
        raise ValueError(f"download_to_cache needs a 40-hex commit, got {commit!r}")
    endpoint = resolve_endpoint(endpoint)
    tok, source = _token_and_source(token)
    ctx = dict(repo_id=repo_id, revision=commit, endpoint=endpoint, token=tok, source=source, repo_type=repo_type)
    if is_offline():
        raise _offline_error(repo_id, commit, "HF_HUB_OFFLINE is set", endpoint=endpoint, repo_type=repo_type)
    path = Path(_call(lambda: hf_hub_download(repo_id, filename, revision=commit, cache_dir=cache_dir,
                                              token=tok or False, endpoint=endpoint, repo_type=repo_type), ctx))
    if size is not None and path.stat().st_size != size:
        got = path.stat().st_size
        path.unlink()  # a cached file of the wrong size would be trusted by every later look-up
        raise IncompleteSnapshotError(
            f"{filename} of {repo_id}@{commit[:12]} arrived with {got} of {size} bytes.",
            f"Re-run the fetch; if it keeps failing, check the free disk space in {cache_dir} and the network.",
            repo_id=repo_id, missing=(filename,))
    return path

"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for tests that must not touch the network.

It answers the routes huggingface_hub 2.4.0 calls for ``model_info``, ``snapshot_download`` and ``hf_hub_download``:

- ``GET  /api/models/{repo}[/revision/{rev}]``  repo info: ``sha``, ``gated``, ``siblings`` (sizes with ``?blobs``);
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``  the file listing ``snapshot_download`` downloads from;
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``  file metadata (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and
  bytes;
- ``GET  /api/models``  an empty model list (a cheap reachability probe);
- the same routes for dataset repos (``/api/datasets/...``, ``/datasets/{repo}/resolve/...``) for a repo keyed
  ``datasets/owner/name`` in ``repos``;

and the hub's error answers: 404 ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, 401/403
``X-Error-Code: GatedRepo`` for a gated repo whose licence the token has not accepted, 401 ``Invalid credentials in
Authorization header`` for a token the hub does not know.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


def isolate_hf(monkeypatch, tmp_path: Path) -> None:
    """Keep a test away from the real hub, the user's login and caches: no token, no offline mode, no proxy for
    127.0.0.1, huggingface_hub's cache and token file under ``tmp_path``."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                 "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    close_session()  # the shared client read the proxy settings when it was made


def dead_endpoint() -> str:
    """A local URL nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def git_oid(data: bytes) -> str:
    """The git blob id of ``data``, as the hub reports it for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One model repo. ``files`` is the truth the listing reports; ``served`` overrides what ``/resolve`` returns for a
    file (other bytes, or ``None`` for a 404) to imitate a broken or truncated download."""

    files: dict[str, bytes]
    commit: str = "a" * 40
    refs: dict[str, str] = field(default_factory=dict)  # extra branch/tag -> commit; "main" always maps to `commit`
    gated: bool = False
    gate_api: bool = False  # also refuse the API routes (not only file downloads) without access
    granted_tokens: frozenset[str] = frozenset()
    served: dict[str, bytes | None] = field(default_factory=dict)
    api_delay_s: float = 0.0  # sleep before answering the API, to provoke client timeouts

    def resolve(self, revision: str) -> str | None:
        """The commit ``revision`` names, or None."""
        if revision == self.commit or revision == "main":
            return self.commit
        return self.refs.get(revision, revision if revision in self.refs.values() else None)


@dataclass
class Request:
    """One request the fake hub saw (the token itself is not kept, only whether one was sent)."""

    method: str
    path: str
    authenticated: bool


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout tests) leaves a broken pipe behind; anything else is a bug worth seeing.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeHub:
    """A threaded HTTP server answering as the hub does for ``repos``. Use as a context manager; ``url`` is the
    endpoint to pass to huggingface_hub."""

    def __init__(self, repos: dict[str, FakeRepo], *, valid_tokens: frozenset[str] | None = None) -> None:
        self.repos = repos
        self.valid_tokens = valid_tokens  # None: any bearer token is a valid account
        self.requests: list[Request] = []
        self.seen_authorization: list[str] = []  # raw Authorization headers, for tests that check what was sent
        self._server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def paths(self, method: str | None = None) -> list[str]:
        """Request paths seen so far, optionally only those of one HTTP method."""
        return [r.path for r in self.requests if method is None or r.method == method]


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        # -- plumbing -----------------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload, headers: dict[str, str] | None = None) -> None:
            self._send(200, json.dumps(payload).encode(), headers)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization")
            if auth:
                hub.seen_authorization.append(auth)
            return auth.removeprefix("Bearer ").strip() if auth else None

        # -- routing ------------------------------------------------------------------------------------------
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            segments = [unquote(s) for s in parts.path.strip("/").split("/")]
            token = self._token()
            hub.requests.append(Request(self.command, parts.path, token is not None))

            if token is not None and hub.valid_tokens is not None and token not in hub.valid_tokens:
                return self._error(401, None, "Invalid credentials in Authorization header")
            if segments == ["api", "models"]:
                return self._json([])
            if len(segments) >= 4 and segments[:2] == ["api", "models"]:
                return self._api(segments[2:], query, token)
            if len(segments) >= 4 and segments[:2] == ["api", "datasets"]:
                return self._api(segments[2:], query, token, prefix="datasets/")
            if len(segments) >= 6 and segments[0] == "datasets" and segments[3] == "resolve":
                return self._resolve("datasets/" + "/".join(segments[1:3]), segments[4], "/".join(segments[5:]),
                                     token)
            if len(segments) >= 5 and segments[2] == "resolve":
                return self._resolve("/".join(segments[:2]), segments[3], "/".join(segments[4:]), token)
            return self._error(404, None, "Not Found")

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _gate(self, repo_id: str, repo: FakeRepo, token: str | None) -> bool:
            """Answer 401/403 GatedRepo like the hub; True if the request may go on."""
            if not repo.gated or token in repo.granted_tokens:
                return True
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                              "it and be authenticated to access it. Please log in.")
            else:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                                              f"authorized list. Visit https://huggingface.co/{repo_id} to ask "
                                              "for access.")
            return False

        def _api(self, rest: list[str], query: dict[str, list[str]], token: str | None, prefix: str = "") -> None:
            repo_id, rest = prefix + "/".join(rest[:2]), rest[2:]
            repo = self._repo(repo_id)
            if repo is None:
                return
            if repo.api_delay_s:
                time.sleep(repo.api_delay_s)
            if repo.gate_api and not self._gate(repo_id, repo, token):
                return
            if not rest or rest[0] == "revision":
                commit = repo.resolve(rest[1] if len(rest) > 1 else "main")
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                siblings = [{"rfilename": path, **({"size": len(data), "blobId": git_oid(data)} if blobs else {})}
                            for path, data in sorted(repo.files.items())]
                name = repo_id.removeprefix("datasets/")
                return self._json({"id": name, "modelId": name, "sha": commit, "private": False,
                                   "gated": "manual" if repo.gated else False, "siblings": siblings})
            if rest[0] == "tree" and len(rest) >= 2:
                commit = repo.resolve(rest[1])
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                prefix = "/".join(rest[2:])
                entries, folders = [], set()
                for path, data in sorted(repo.files.items()):
                    if prefix and not path.startswith(prefix + "/"):
                        continue
                    entries.append({"type": "file", "path": path, "size": len(data), "oid": git_oid(data)})
                    folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
                entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
                return self._json(entries)
            return self._error(404, None, "Not Found")

        def _resolve(self, repo_id: str, revision: str, filename: str, token: str | None) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if not self._gate(repo_id, repo, token):
                return
            data = repo.served.get(filename, repo.files.get(filename))
            if data is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}")
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{git_oid(data)}"'},
                       content_type="application/octet-stream")

    return Handler

"""What every preference scorer shares: the sample folder it reads, the weights folder it loads, the record it
writes, and the way a scorer whose reference package clashes with the main environment is run in its own venv.

Sample folder: PNGs plus the merged ``manifest.jsonl`` of ``sidrepro sample`` (one row per image: ``file``,
``caption``, ``prompt_id``, ``model``, ``model_hash``). Each image is scored against its own caption.

Weights folder: whatever files the scorer loads plus ``scorer.json`` (``WEIGHTS_FILE``), written last by
``sidrepro score-weights``: ``{"scorer", "tiny", "files": {role: path relative to the folder}, "reference":
{model ids, hub commits, file names, version}}``. Real weights come from the hub at commits pinned in the lock file
(``sidrepro.teachers.hub``); tiny ones are random-weight models of the same classes written offline (tests, smoke).

Record (``sidrepro score --out``)::

    {"metric": "<key>", "<key>": mean score, "num_images": N, "model_id": sampled model, "model_hash": ...,
     "scorer": name, "tiny": bool, "reference": {...model ids, commits..., "weights_sha256": {file: sha256}},
     "versions": {package: version}, "env": {...} | null, "preprocessing": "...", "precision": "...",
     "samples": folder, "manifest_sha256": ..., "code": code_revision(), "std": ..., "min": ..., "max": ...}

``<key>`` is ``aesthetic``, ``hpsv2``, ``image_reward`` or ``pickscore`` (what ``sidrepro.tables`` reads), each on
the raw scale the paper prints (HPSv2 about 0.3, not x100; PickScore about 21).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ...atomic import write_json_atomic
from ...hashing import file_digest

WEIGHTS_FILE = "scorer.json"
MANIFEST = "manifest.jsonl"
ENV_SPEC_DIR = Path(__file__).resolve().parents[3] / "workflow" / "envs"  # pin files of the separate environments


class ScorerError(RuntimeError):
    """A scorer that cannot run as asked, with what to do about it."""


@dataclass(frozen=True)
class Sample:
    """One image to score: its file and its caption."""

    file: Path
    caption: str
    prompt_id: int


@dataclass(frozen=True)
class ScorerInfo:
    """A scorer: its metric key, where it runs (``env`` None = the main environment, else the name of its pin file
    ``workflow/envs/<env>.txt``), its runner script for that environment, and its reference (hub ids and files)."""

    name: str
    env: str | None
    reference: dict[str, Any]
    preprocessing: str
    packages: tuple[str, ...]  # distributions whose versions the record names
    runner: str | None = None  # module file name beside this one, run by the env's python
    notes: tuple[str, ...] = field(default=())

    @property
    def spec(self) -> Path | None:
        """The pin file of the scorer's environment (None for the main one)."""
        return None if self.env is None else ENV_SPEC_DIR / f"{self.env}.txt"

    @property
    def runner_path(self) -> Path | None:
        return None if self.runner is None else Path(__file__).with_name(self.runner)


# ------------------------------------------------------------------------------------------------ sample folders
def read_samples(folder: Path) -> list[Sample]:
    """The images of a merged sample folder and their captions, in manifest order."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: merge the shards' manifests first (`sidrepro merge-samples "
                                f"{folder}`)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} lists no images")
    samples = []
    for row in rows:
        file = folder / row["file"]
        if not file.is_file():
            raise FileNotFoundError(f"{file} (prompt id {row.get('prompt_id')}) is listed in {path} but missing")
        samples.append(Sample(file, str(row["caption"]), int(row.get("prompt_id", len(samples)))))
    return samples


def sample_model(folder: Path) -> dict[str, Any]:
    """What the manifest says about the sampled model: ``model_id`` (its registry name), kind and hash."""
    rows = [json.loads(line) for line in (Path(folder) / MANIFEST).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    hashes = sorted({str(r.get("model_hash")) for r in rows})
    if len(hashes) > 1:
        raise ValueError(f"{folder} mixes images of {len(hashes)} models; sample each model into its own folder")
    first = rows[0] if rows else {}
    return {"model_id": first.get("model"), "kind": first.get("kind"), "model_hash": hashes[0] if hashes else None}


# ------------------------------------------------------------------------------------------------- weights folder
def read_weights(folder: Path, scorer: str) -> dict[str, Any]:
    """The ``scorer.json`` of a weights folder, checked to be for ``scorer`` and to list files that exist; the
    ``files`` entries are made absolute."""
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ScorerError(f"{folder} is not a finished weights folder (no {WEIGHTS_FILE}).\nFix: run `sidrepro "
                          f"score-weights --scorer {scorer} --out {folder}` (add --tiny for random offline weights)")
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("scorer") != scorer:
        raise ScorerError(f"{folder} holds weights of the {info.get('scorer')!r} scorer, not {scorer!r}")
    files = {}
    for role, rel in info.get("files", {}).items():
        file = (folder / rel).resolve()
        if not file.exists():
            raise ScorerError(f"{folder}: {role} file {rel} is missing; re-run `sidrepro score-weights`")
        files[role] = file
    return {**info, "files": files, "folder": folder.resolve()}


def write_weights(folder: Path, scorer: str, *, tiny: bool, files: dict[str, Path], reference: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """Write ``scorer.json`` (last: its presence marks a complete folder); paths are stored relative to ``folder``."""
    folder = Path(folder).resolve()
    rel = {role: os.path.relpath(Path(p).resolve(), folder) for role, p in files.items()}
    record = {"scorer": scorer, "tiny": tiny, "files": rel, "reference": reference, **extra}
    write_json_atomic(folder / WEIGHTS_FILE, record)
    return record


def weights_sha256(files: dict[str, Path]) -> dict[str, str]:
    """sha256 of every weight file (a folder role, such as a tokenizer folder, hashes each file inside)."""
    out: dict[str, str] = {}
    for role, path in sorted(files.items()):
        path = Path(path)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                out[f"{role}/{f.relative_to(path)}"] = file_digest(f)
        else:
            out[role] = file_digest(path)
    return out


# ---------------------------------------------------------------------------------------------------- the record
def versions(packages: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` in this interpreter (None where absent), plus Python's."""
    out: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def summary(scores: list[float]) -> dict[str, float]:
    """Mean, population std, min and max of per-image scores (all finite, else ``ScorerError``)."""
    if not scores:
        raise ScorerError("no images were scored")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ScorerError(f"{len(bad)} image(s) got a non-finite score (first at position {bad[0]})")
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return {"mean": mean, "std": std, "min": min(scores), "max": max(scores)}


def build_record(info: ScorerInfo, samples_dir: Path, scores: list[float], weights: dict[str, Any], *,
                 versions_: dict[str, Any], env: dict[str, Any] | None, precision: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics record of one scorer on one sample folder (module docstring)."""
    from ...revision import code_revision

    stats = summary(scores)
    reference = {**info.reference, **weights.get("reference", {}),
                 "weights_sha256": weights_sha256(weights["files"])}
    return {
        "metric": info.name, info.name: stats["mean"], "num_images": len(scores),
        "std": stats["std"], "min": stats["min"], "max": stats["max"],
        **sample_model(samples_dir),
        "scorer": info.name, "tiny": bool(weights.get("tiny")), "reference": reference,
        "versions": versions_, "env": env, "preprocessing": info.preprocessing, "precision": precision,
        "samples": str(samples_dir), "manifest_sha256": file_digest(Path(samples_dir) / MANIFEST),
        "code": code_revision(), **(extra or {}),
    }


# ----------------------------------------------------------------------------------------- separate environments
def env_record(env_dir: Path, info: ScorerInfo) -> dict[str, Any]:
    """Check that ``env_dir`` is a complete environment built from the scorer's current pin file and describe it."""
    from ...envs import env_python, read_stamp, spec_digest

    env_dir = Path(env_dir)
    spec = info.spec
    assert spec is not None
    build = (f"sidrepro env --spec {os.path.relpath(spec)} --out {env_dir}")
    stamp = read_stamp(env_dir)
    if stamp is None or not env_python(env_dir).exists():
        raise ScorerError(f"{env_dir} is not a built environment for the {info.name} scorer.\nFix: {build}")
    if stamp.get("spec_sha256") != spec_digest(spec):
        raise ScorerError(f"{env_dir} was built from other pins than {spec} (it changed since).\nFix: {build}")
    return {"dir": str(env_dir.resolve()), "spec": spec.name, "spec_sha256": stamp["spec_sha256"],
            "python": stamp.get("python")}


def run_runner(info: ScorerInfo, env_dir: Path, command: str, payload: dict[str, Any], *,
               threads: int | None = None) -> dict[str, Any]:
    """Run the scorer's runner script with the environment's python: ``payload`` goes in as a JSON file, the
    runner's JSON answer comes back. Errors carry the runner's last lines."""
    from ...envs import env_python

    runner = info.runner_path
    assert runner is not None
    with tempfile.TemporaryDirectory(prefix=f"sidrepro-{info.name}-") as tmp:
        request, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        request.write_text(json.dumps(payload), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["HF_HUB_OFFLINE"] = "1"  # runners load local files only; a silent download would be a bug
        env["TRANSFORMERS_OFFLINE"] = "1"
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run([str(env_python(env_dir)), "-I", str(runner), command, str(request), str(answer)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not answer.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise ScorerError(f"the {info.name} runner ({runner.name} {command}) failed in {env_dir} "
                              f"(exit {proc.returncode}):\n{tail}")
        return json.loads(answer.read_text(encoding="utf-8"))


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write the record atomically (a killed job leaves no half-written metrics file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


# ------------------------------------------------------------------------------------------------- hub weights
def fetch_hub_files(repo_id: str, dest_root: Path, groups: list[list[str]], *, optional: tuple[str, ...] = (),
                    revision: str = "main", lock_file: Path | None = None, update_lock: bool = False
                    ) -> tuple[Path, str, list[str]]:
    """Fetch one file per group (the first name in each group that the repo has, so a repo with both ``.bin`` and
    ``.safetensors`` costs one download), and the ``optional`` names it has, of ``repo_id`` at the commit
    ``lock_file`` pins for ``revision`` into ``dest_root/owner--name`` through
    ``sidrepro.teachers.hub.fetch_snapshot``; return ``(folder, commit, files)``. A complete earlier fetch of the
    pinned commit is reused without any network access."""
    from ...teachers.hub import (
        HubError,
        default_snapshot_dir,
        fetch_snapshot,
        pinned_commit,
        read_marker,
        remote_snapshot,
        verify_snapshot,
    )

    dest = default_snapshot_dir(Path(dest_root), repo_id)
    pinned = pinned_commit(repo_id, revision, lock_file, update_lock=update_lock)
    marker = read_marker(dest)
    if marker is not None and not update_lock and (pinned is None or marker.get("commit") == pinned) \
            and marker.get("requested") == revision:
        snap, _ = verify_snapshot(dest, repo_id=repo_id, commit=marker["commit"],
                                  allow_patterns=marker.get("allow_patterns"))
        if snap is not None:
            return dest, snap.commit, sorted(snap.files)
    names = [n for g in groups for n in g] + list(optional)
    remote = remote_snapshot(repo_id, pinned or revision, allow_patterns=names)
    chosen = []
    for group in groups:
        hit = next((n for n in group if n in remote.files), None)
        if hit is None:
            raise HubError(f"{repo_id}@{remote.commit[:12]} has none of {group}.",
                           "Check the repo's files on the hub; the scorer's weights layout may have changed.",
                           repo_id=repo_id)
        chosen.append(hit)
    chosen += [n for n in optional if n in remote.files]
    snap = fetch_snapshot(repo_id, revision, dest, allow_patterns=chosen, lock_file=lock_file,
                          update_lock=update_lock)
    return dest, snap.commit, chosen

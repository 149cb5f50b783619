"""Where one number of a results table comes from: the metrics file, the samples, the reference statistics, the
model (for a student: its checkpoint and training parameters), the code revisions and the DVC record, each with
its hash, and whether every recorded hash still matches the file on disk.

Torch-free; it only reads what the workflow wrote: the table CSV (``metrics_file`` and ``provenance`` columns), the
metrics JSON of ``sidrepro evaluate``, the sample folder's ``plan.json``, the student folder's metadata, the
checkpoint folder and ``dvc.lock``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from .hashing import file_digest
from .tables import METRICS

STUDENT_FILE = "sidrepro_student.json"  # the student folder's metadata (sidrepro.teachers.student writes it)
SNAPSHOT_MARKERS = (".sidrepro-snapshot.json", "zoo.json")  # a fetched hub snapshot's / a zoo model's record


class ProvenanceError(ValueError):
    """A table, row or metric that cannot be traced, with what to do about it."""


def _rows(table: Path) -> list[dict[str, str]]:
    if not table.is_file():
        raise ProvenanceError(f"{table}: no such table; build it first (snakemake ... {table})")
    with table.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def find_row(rows: list[dict[str, str]], row: str) -> dict[str, str]:
    """The measured row whose model id is ``row``, else the one whose row name or block contains it (case-blind)."""
    measured = [r for r in rows if r.get("model")]
    exact = [r for r in measured if r["model"] == row]
    if exact:
        return exact[0]
    hits = [r for r in measured if row.lower() in f"{r['block']} {r['row']} {r['setting']}".lower()]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(f"{r['model']} ({r['block']}: {r['row']})" for r in (hits or measured))
    raise ProvenanceError(f"row {row!r} matches {len(hits)} measured rows; give one of the model ids: {listing}")


def _sha256(path: Path) -> str | None:
    return file_digest(path) if path.is_file() else None


def _check(path: Path, recorded: str | None) -> dict[str, Any]:
    """A file with its recorded and current sha256 and whether they agree (``None``: nothing recorded)."""
    current = _sha256(path)
    ok = None if not recorded else current == recorded.removeprefix("sha256:")
    return {"path": str(path), "sha256": current, "recorded_sha256": recorded or "", "matches": ok,
            "exists": path.exists()}


def folder_digest(folder: Path) -> str:
    """sha256 over the sorted (relative name, file sha256) pairs of every file under ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


def params_digest(params: Any) -> str:
    """sha256 of parameters as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model(source: dict[str, str], record: dict[str, Any]) -> dict[str, Any]:
    """The sampled model: its recorded hash and, from its folder, the checkpoint, parameters and code (students) or
    the snapshot record (teachers, baselines)."""
    folder = Path(source["folder"]) if source.get("folder") else None
    out: dict[str, Any] = {"kind": record.get("kind", ""), "name": record.get("model", ""),
                           "model_hash": record.get("model_hash", ""), "folder": str(folder or "")}
    if folder is None:
        return out
    meta = _read_json(folder / STUDENT_FILE)
    if meta is not None:
        ckpt = Path(meta["checkpoint"])
        out.update(teacher=meta.get("teacher"), teacher_hub_id=meta.get("hub_id"),
                   teacher_revision=meta.get("revision"), teacher_commit=meta.get("commit"),
                   setting=meta.get("setting"), images_seen=meta.get("images_seen"),
                   checkpoint={"path": str(ckpt), "exists": ckpt.is_dir(),
                               "sha256": folder_digest(ckpt) if ckpt.is_dir() else None},
                   params=meta.get("config", {}), params_sha256=params_digest(meta.get("config", {})),
                   train_code=meta.get("code", {}), selection=meta.get("selection"))
        return out
    for name in SNAPSHOT_MARKERS:
        marker = _read_json(folder / name)
        if marker is not None:
            out["snapshot"] = {"marker": str(folder / name), **{k: v for k, v in marker.items()
                                                                 if isinstance(v, (str, int, float))}}
            break
    return out


def _dvc_record(paths: list[Path], lock: Path) -> list[dict[str, str]]:
    """The ``dvc.lock`` outputs that contain any of ``paths``: stage, output path and its DVC md5."""
    if not lock.is_file():
        return []
    import yaml

    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    found = []
    for stage, body in stages.items():
        for o in body.get("outs", []):
            out = Path(o["path"])
            if any(p == out or out in p.parents for p in paths):
                found.append({"stage": stage, "path": o["path"], "md5": o.get("md5", "")})
    commit = subprocess.run(["git", "-C", str(lock.parent), "log", "-1", "--format=%H", "--", lock.name],
                            capture_output=True, text=True).stdout.strip()
    for f in found:
        f["lock_commit"] = commit
    return found


def trace(table: Path, row: str, metric: str | None = None, *, lock: Path = Path("dvc.lock")) -> dict[str, Any]:
    """Everything behind one cell (``metric`` given) or one row of ``table`` (see the module docstring).

    Raises ``ProvenanceError`` for an unknown table, row or metric, an unmeasured cell, or a missing metrics file."""
    table = Path(table)
    r = find_row(_rows(table), row)
    if metric is not None and metric not in METRICS:
        raise ProvenanceError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric is not None and not r.get(f"{metric}_ours"):
        raise ProvenanceError(f"{r['model']}: {metric} was not measured (empty cell)")
    score_files = dict(item.split("=", 1) for item in (r.get("score_files") or "").split(";") if "=" in item)
    from_score = metric is not None and METRICS[metric] in score_files
    metrics_path = Path(score_files[METRICS[metric]] if from_score else r.get("metrics_file") or "")
    if not str(metrics_path) or not metrics_path.is_file():
        raise ProvenanceError(f"{r['model']}: metrics file {str(metrics_path) or '(none recorded)'} not found; run "
                              "from the workflow's folder, after `dvc pull` if the outputs live in a DVC remote")
    record = json.loads(metrics_path.read_text(encoding="utf-8"))
    current = file_digest(metrics_path)
    # Score files (sidrepro score) name the sample folder and the manifest's hash; metrics files the manifest itself.
    manifest = Path(record.get("sample_manifest") or Path(record.get("samples", "")) / "manifest.jsonl")
    manifest_sha = record.get("sample_manifest_sha256") or record.get("manifest_sha256")
    plan = _read_json(manifest.parent / "plan.json") or {}
    cell = {}
    if metric is not None:
        cell = {"metric": metric, **{k: r[f"{metric}_{k}"] for k in ("paper", "ours", "diff")}}
    paths = [metrics_path, manifest, Path(record.get("reference_stats", ""))]
    model = _model(plan.get("source", {}), record)
    if model.get("checkpoint"):
        paths.append(Path(model["checkpoint"]["path"]))
    return {
        "table": str(table), "model_id": r["model"], "block": r["block"], "row": r["row"], "setting": r["setting"],
        "run": r["run"], "cell": cell, "protocol": record.get("protocol_id", ""),
        "num_images": record.get("num_images"), "complete": record.get("complete"),
        "metrics": {"path": str(metrics_path), "sha256": current, "table_provenance": r["provenance"],
                    "matches": None if from_score else current.startswith(r["provenance"])},
        "scorer": {k: record.get(k) for k in ("reference", "env", "versions")} if from_score else {},
        "samples": {**_check(manifest, manifest_sha), "plan": plan.get("model", {}),
                    "seed": plan.get("seed"), "captions_sha256": plan.get("captions_sha256")},
        "reference_stats": _check(Path(record.get("reference_stats", "")), record.get("reference_stats_sha256")),
        "model": model,
        "eval_code": record.get("code", {}), "versions": record.get("versions", {}),
        "dvc": _dvc_record(paths, Path(lock)),
    }


def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "CHANGED since recorded", None: "not recorded"}[ok]


def _code(code: dict[str, Any]) -> str:
    if not code:
        return "not recorded"
    dirty = " + uncommitted changes" if code.get("dirty") else ""
    return f"{code.get('commit') or '(not a git checkout)'}{dirty} (sidrepro {code.get('version', '?')})"


def _selection_line(sel: dict[str, Any]) -> str:
    last = sel["last"]
    return (f"snapshot {sel['snapshot']} ({sel['kimg']:g} kimg) by {sel['rule']} among {sel['candidates']} scored on "
            f"{sel['num_images']} {sel['subset']} captions ({sel['protocol']}): FID {sel['fid']:.4g}, CLIP "
            f"{sel['clip']:.4g}; last snapshot {last['kimg']:g} kimg: FID {last['fid']:.4g}, CLIP {last['clip']:.4g}")


def format_trace(t: dict[str, Any]) -> str:
    """A readable report of ``trace``'s result."""
    lines = [f"{t['table']}: {t['block']} / {t['row']} ({t['setting']}), model {t['model_id']}, run {t['run']}"]
    if t["cell"]:
        c = t["cell"]
        lines.append(f"  {c['metric']}: ours {c['ours']}, paper {c['paper'] or '-'}, diff {c['diff'] or '-'}")
    lines.append(f"  protocol {t['protocol']}, {t['num_images']} images (complete: {t['complete']})")
    m = t["metrics"]
    state = {True: "ok", False: "CHANGED since the table", None: "score file"}[m["matches"]]
    lines.append(f"  metrics    {m['path']}  sha256 {m['sha256']}  ({state})")
    if t["scorer"]:
        ref = t["scorer"].get("reference") or {}
        env = t["scorer"].get("env") or {}
        lines.append(f"  scorer     {json.dumps(ref, sort_keys=True)[:300]}")
        if env:
            lines.append(f"  scorer env {env.get('dir')} from {env.get('spec')} sha256 {env.get('spec_sha256')}")
    s = t["samples"]
    lines.append(f"  samples    {s['path']}  sha256 {s['sha256']}  ({_mark(s['matches'])}); seed {s['seed']}, "
                 f"captions sha256 {s['captions_sha256']}")
    ref = t["reference_stats"]
    lines.append(f"  reference  {ref['path']}  sha256 {ref['sha256']}  ({_mark(ref['matches'])})")
    mod = t["model"]
    lines.append(f"  model      {mod['kind']} {mod['name']}  {mod['model_hash']}  folder {mod['folder'] or '-'}")
    if "checkpoint" in mod:
        ck = mod["checkpoint"]
        lines.append(f"  checkpoint {ck['path']}  sha256 {ck['sha256'] or '(missing)'}; {mod['images_seen']} images")
        sel = mod.get("selection")
        lines.append(f"  selected   {_selection_line(sel)}" if sel else
                     "  selected   no rule: the run's latest checkpoint (exported without --select)")
        lines.append(f"  teacher    {mod['teacher_hub_id']}@{mod['teacher_revision']} "
                     f"commit {mod['teacher_commit'] or '-'}; setting {mod['setting']}")
        lines.append(f"  params     sha256 {mod['params_sha256']} ({len(mod['params'])} values, --json lists them)")
        lines.append(f"  train code {_code(mod['train_code'])}")
    elif "snapshot" in mod:
        snap = mod["snapshot"]
        lines.append(f"  snapshot   {snap['marker']}: " + ", ".join(f"{k}={v}" for k, v in snap.items()
                                                                       if k != "marker"))
    lines.append(f"  eval code  {_code(t['eval_code'])}; " + ", ".join(f"{k} {v}" for k, v in t["versions"].items()))
    for d in t["dvc"]:
        lines.append(f"  dvc        stage {d['stage']}: {d['path']} md5 {d['md5']} (dvc.lock at commit "
                     f"{d['lock_commit'] or 'uncommitted'})")
    if not t["dvc"]:
        lines.append("  dvc        not recorded in dvc.lock (run `dvc commit` after the workflow)")
    return "\n".join(lines)

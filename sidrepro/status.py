"""Where each distillation run and sample folder of a workflow stands, read from their files only.

Nothing here imports torch or asks a scheduler, so it runs on a login node while jobs write the folders. The layout
is the workflow's (workflow/rules/common.smk):

    ROOT/runs/<teacher>/<setting>/          config.json, log.jsonl, status.json, checkpoints/ckpt-N/, grids/grid-N.png
    ROOT/runs/<teacher>/<setting>.done      written after the distillation finished
    ROOT/report/fid/<teacher>--<setting>.csv  FID per checkpoint (`sidrepro fid-curve`)
    ROOT/samples/<model>/                   plan.json, manifest-KKK-of-NNN.jsonl, .shard-K-of-N.done, manifest.jsonl

A run's ``status.json`` (written by the trainer at start, after every checkpoint and at exit) says its state; a run
without one is judged from its log, checkpoints and done stamp. A run that claims to be running but has written
neither ``status.json`` nor a log row for ``stale_after`` seconds is shown as ``no heartbeat``: its job may have been
killed. Every unreadable file becomes a note on its row, never an exception.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runstatus import STATUS_FILE

# The checkpoint marker and sample-folder names of sidrepro.distill.checkpoint and sidrepro.evaluate.sampling; those
# modules import torch, so the names are repeated here (tests/test_status.py pins them to the originals).
CHECKPOINT_MARKER = "COMPLETE"
CHECKPOINT_FORMAT = "sidrepro-checkpoint/1"
PLAN_FILE = "plan.json"
MERGED_FILE = "manifest.jsonl"

STALE_SECONDS = 600.0  # a live trainer writes a log row every iteration; loading a large teacher takes minutes
RUN_STATES = ("not started", "running", "no heartbeat", "stopped", "failed", "finished")
SAMPLE_STATES = ("not started", "sampling", "idle", "sampled", "merged")

_CKPT_RE = re.compile(r"^ckpt-(\d{10})$")
_GRID_RE = re.compile(r"^grid-(\d{10})\.png$")
_MANIFEST_RE = re.compile(r"^manifest-(\d{3})-of-(\d{3})\.jsonl$")
_STAMP_RE = re.compile(r"^\.shard-(\d+)-of-(\d+)\.done$")
_LOG_TAIL_BYTES = 65536  # the last rows of log.jsonl; a paper run's log grows to megabytes


@dataclass
class RunStatus:
    """One distillation run. ``nimg``/``total_nimg`` count this run's images (a data-aided run starts at 0);
    ``eta_seconds`` is the time to the target at ``images_per_sec`` (for a run that is not running: the compute time
    it still needs). Ages are seconds before the moment of reading."""

    name: str
    folder: str
    state: str = "not started"
    nimg: int | None = None
    total_nimg: int | None = None
    images_per_sec: float | None = None
    eta_seconds: float | None = None
    checkpoint: str = ""
    checkpoint_age: float | None = None
    grid: str = ""
    grid_age: float | None = None
    fid: float | None = None
    fid_kimg: float | None = None
    heartbeat_age: float | None = None
    reason: str = ""
    job_id: str = ""
    deadline: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float | None:
        """Images seen as a percentage of the target, when both are known."""
        if self.nimg is None or not self.total_nimg:
            return None
        return 100.0 * self.nimg / self.total_nimg


@dataclass
class SampleStatus:
    """One sample folder: shards done of the plan's, images written of those planned, merged or not."""

    model: str
    folder: str
    state: str = "not started"
    shards_done: int = 0
    num_shards: int | None = None
    images: int = 0
    planned: int | None = None
    merged: bool = False
    last_write_age: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Status:
    """Every run and sample folder of one workflow root at one moment (``now``, unix time)."""

    root: str
    now: float
    runs: list[RunStatus]
    samples: list[SampleStatus]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``percent`` included for each run)."""
        return {"root": self.root, "now": self.now,
                "runs": [{**asdict(r), "percent": r.percent} for r in self.runs],
                "samples": [asdict(s) for s in self.samples]}


# ---------------------------------------------------------------------------------------------------- whole roots


def root_status(root: Path, *, now: float | None = None, stale_after: float = STALE_SECONDS) -> Status:
    """Every run folder (``ROOT/runs/*/*/``) and sample folder (``ROOT/samples/*/``) found under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the workflow's root (the config's `root`, e.g. "
                                "work/smoke) or --configfile")
    now = time.time() if now is None else now
    runs_dir, samples_dir = root / "runs", root / "samples"
    pairs = sorted({(t.name, s.name) for t in _subdirs(runs_dir) for s in _subdirs(t)}
                   | {(t.name, d.name[:-5]) for t in _subdirs(runs_dir) for d in t.glob("*.done")})
    runs = [read_run(runs_dir / t / s, name=f"{t}/{s}", done_stamp=runs_dir / t / f"{s}.done",
                     fid_csv=root / "report" / "fid" / f"{t}--{s}.csv", now=now, stale_after=stale_after)
            for t, s in pairs]
    samples = [read_samples(d, model=d.name, now=now, stale_after=stale_after) for d in _subdirs(samples_dir)]
    return Status(str(root), now, runs, samples)


def config_status(config: dict[str, Any], *, now: float | None = None,
                  stale_after: float = STALE_SECONDS) -> Status:
    """Every run (teacher x setting) and sample folder (students, teacher rows, baselines) a workflow config asks for,
    started or not. A target the config sets (``duration_kimg`` in ``distill.set`` or the teacher's ``set``) stands
    in for the run's own until its folder has one."""
    root = Path(config["root"])
    now = time.time() if now is None else now
    num_shards = config.get("sample", {}).get("num_shards")
    runs, models = [], []
    for teacher, entry in config["teachers"].items():
        for setting in entry.get("settings", []):
            values = {**config.get("distill", {}).get("set", {}), **entry.get("set", {}),
                      **entry.get("set_by_setting", {}).get(setting, {})}
            run = read_run(root / "runs" / teacher / setting, name=f"{teacher}/{setting}",
                           done_stamp=root / "runs" / teacher / f"{setting}.done",
                           fid_csv=root / "report" / "fid" / f"{teacher}--{setting}.csv", now=now,
                           stale_after=stale_after)
            if run.total_nimg is None and "duration_kimg" in values:
                run.total_nimg = round(float(values["duration_kimg"]) * 1000)
            runs.append(run)
            models.append(f"{teacher}--{setting}")
        if entry.get("teacher_row", True):
            models.append(f"teacher--{teacher}")
    models += [f"baseline--{b}" for b in config.get("baselines", {})]
    samples = [read_samples(root / "samples" / m, model=m, num_shards=num_shards, now=now, stale_after=stale_after)
               for m in models]
    return Status(str(root), now, runs, samples)


def load_config(path: Path) -> dict[str, Any]:
    """A workflow config (YAML) with the keys this module reads checked: ``root`` and a ``teachers`` mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}; pass --configfile workflow/config/<name>.yaml or --root ROOT")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("root"), str):
        raise ValueError(f"{path}: config key 'root' (the workflow's work folder) is missing")
    if not isinstance(config.get("teachers"), dict):
        raise ValueError(f"{path}: config key 'teachers' must map teacher names to their entries")
    return config


# ---------------------------------------------------------------------------------------------------- one run


def read_run(folder: Path, *, name: str, done_stamp: Path | None = None, fid_csv: Path | None = None,
             now: float | None = None, stale_after: float = STALE_SECONDS) -> RunStatus:
    """The state and progress of the run folder ``folder`` (see the module docstring for what decides the state)."""
    folder = Path(folder)
    now = time.time() if now is None else now
    run = RunStatus(name=name, folder=str(folder))
    done = done_stamp is not None and done_stamp.exists()
    if not folder.is_dir():
        if done:
            run.state = "finished"
            run.notes.append("run folder missing")
        return run
    notes = run.notes
    # Checkpoints before the log: a checkpoint is written after its log row, so the row read next is never older.
    ckpt, ckpt_time = _latest_checkpoint(folder / "checkpoints")
    if ckpt:
        run.checkpoint, run.checkpoint_age = ckpt, now - ckpt_time
    status = _read_json(folder / STATUS_FILE, notes)
    row, log_time = _last_log_row(folder / "log.jsonl", notes)
    config = _read_json(folder / "config.json", notes)
    resolved = config.get("config") if isinstance(config, dict) else None
    if isinstance(resolved, dict) and isinstance(resolved.get("duration_kimg"), int | float):
        run.total_nimg = round(resolved["duration_kimg"] * 1000)
    elif config is not None:
        notes.append("config.json: no config.duration_kimg")
    grid = _newest(folder / "grids", _GRID_RE)
    if grid is not None:
        run.grid, run.grid_age = grid.name, now - _mtime(grid)
    if fid_csv is not None:
        run.fid, run.fid_kimg = _last_fid(fid_csv, notes)

    # Progress from the fresher of the log's last row (every iteration) and status.json (checkpoints and exit).
    updated = _number(status, "updated")
    if row is not None and (updated is None or log_time >= updated - 1):
        run.nimg, run.images_per_sec = _int(row.get("nimg")), _number(row, "images_per_sec")
    elif status is not None:
        run.nimg, run.images_per_sec = _int(status.get("nimg")), _number(status, "images_per_sec")
    if run.nimg is None and ckpt:
        run.nimg = int(_CKPT_RE.match(ckpt).group(1))
    if status is not None and _int(status.get("total_nimg")):
        run.total_nimg = _int(status.get("total_nimg"))

    heartbeat = max(t for t in (updated, log_time, _mtime(folder), _mtime(folder / "config.json")) if t is not None)
    run.heartbeat_age = now - heartbeat
    # A slow iteration (a large teacher on few GPUs) must not look like a dead job.
    sec_per_iter = _number(row, "sec_per_iter") if row is not None else None
    fresh = run.heartbeat_age <= max(stale_after, 10 * (sec_per_iter or 0.0))
    said = status.get("state") if status is not None else None
    if said in ("finished", "failed", "stopped"):
        run.state = said
    elif said == "running":
        run.state = "running" if fresh else "no heartbeat"
    else:
        if status is not None:
            notes.append(f"status.json: unknown state {said!r}")
        reached = run.nimg is not None and run.total_nimg is not None and run.nimg >= run.total_nimg
        if done or (reached and ckpt and int(ckpt[5:]) >= run.total_nimg):
            run.state = "finished"
        else:
            run.state = "running" if fresh else "no heartbeat"
    if status is not None:
        run.reason = str(status.get("reason") or "")
        run.job_id = str(status.get("job_id") or "")
        run.deadline = _number(status, "deadline")
    if run.state != "finished" and run.images_per_sec and run.nimg is not None and run.total_nimg:
        run.eta_seconds = max(0, run.total_nimg - run.nimg) / run.images_per_sec
    return run


def _latest_checkpoint(ckpt_dir: Path) -> tuple[str, float]:
    """Name and write time of the newest complete checkpoint (``("", 0)`` if none). Complete: its marker parses as a
    checkpoint manifest and every file it lists exists with the listed size (the cheap check of
    ``sidrepro.distill.checkpoint``; sha256 sums are not read)."""
    for path in sorted((p for p in _subdirs(ckpt_dir) if _CKPT_RE.match(p.name)), reverse=True):
        try:
            manifest = json.loads((path / CHECKPOINT_MARKER).read_text())
            if manifest.get("format") != CHECKPOINT_FORMAT or not isinstance(manifest.get("files"), dict):
                continue
            if all((path / rel).stat().st_size == info["size"] for rel, info in manifest["files"].items()):
                created = manifest.get("created_unix")
                written = float(created) if isinstance(created, int | float) else _mtime(path / CHECKPOINT_MARKER)
                return path.name, written
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # incomplete or damaged: the trainer would skip it too
    return "", 0.0


def _last_log_row(path: Path, notes: list[str]) -> tuple[dict | None, float]:
    """The last complete JSON row of a log and the log's write time; a torn last line (a kill mid-write) is
    skipped."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            tail = fh.read()
            written = os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None, 0.0
    except OSError as err:
        notes.append(f"log.jsonl: unreadable ({err.strerror})")
        return None, 0.0
    lines = tail.split(b"\n")[:-1]  # what follows the last newline is unfinished
    if size > _LOG_TAIL_BYTES:
        lines = lines[1:]  # the chunk starts mid-line
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "nimg" in row:
            return row, written
    if tail.strip():
        notes.append("log.jsonl: no readable row")
    return None, written


def _last_fid(path: Path, notes: list[str]) -> tuple[float | None, float | None]:
    """FID and kimg of the latest checkpoint in a `sidrepro fid-curve` CSV (``None`` if absent or unreadable)."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        best = max(rows, key=lambda r: float(r["kimg"]))
        return float(best["fid"]), float(best["kimg"])
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        notes.append(f"{path.name}: not a FID-per-checkpoint CSV")
        return None, None


# ---------------------------------------------------------------------------------------------------- one sample folder


def read_samples(folder: Path, *, model: str, num_shards: int | None = None, now: float | None = None,
                 stale_after: float = STALE_SECONDS) -> SampleStatus:
    """Shard and image counts of one sample folder. A shard counts as done when its workflow stamp exists or its
    manifest holds every image planned for it; images are the manifest rows (complete lines)."""
    folder = Path(folder)
    now = time.time() if now is None else now
    out = SampleStatus(model=model, folder=str(folder), num_shards=num_shards)
    if not folder.is_dir():
        return out
    plan = _read_json(folder / PLAN_FILE, out.notes)
    if isinstance(plan, dict):
        out.num_shards = _int(plan.get("num_shards")) or out.num_shards
        out.planned = _int(plan.get("num_images"))
    elif plan is not None:
        out.notes.append(f"{PLAN_FILE}: not a plan")
    manifests = {}
    for path in folder.iterdir():
        if m := _MANIFEST_RE.match(path.name):
            manifests.setdefault(int(m.group(2)), {})[int(m.group(1))] = path
    if out.num_shards is None and len(manifests) == 1:
        out.num_shards = next(iter(manifests))
    other = sorted(n for n in manifests if n != out.num_shards)
    if other:
        out.notes.append(f"manifests of {', '.join(map(str, other))} shards (not the plan's {out.num_shards})")
    mine = manifests.get(out.num_shards, {})
    rows = {k: _count_rows(p) for k, p in mine.items()}
    out.images = sum(rows.values())
    writes = [t for t in map(_mtime, mine.values()) if t is not None]
    if writes:
        out.last_write_age = now - max(writes)
    stamps = {int(m.group(1)) for p in folder.glob(".shard-*.done")
              if (m := _STAMP_RE.match(p.name)) and int(m.group(2)) == out.num_shards}
    ids = plan.get("prompt_ids") if isinstance(plan, dict) else None
    if out.num_shards and isinstance(ids, list):  # shard k plans ids[k::n]
        stamps |= {k for k, n in rows.items() if n >= len(ids[k::out.num_shards])}
    out.shards_done = len({k for k in stamps if out.num_shards and k < out.num_shards})
    out.merged = (folder / MERGED_FILE).exists()
    if out.merged:
        out.state = "merged"
    elif out.num_shards and out.shards_done == out.num_shards:
        out.state = "sampled"
    elif plan is not None or out.images:
        out.state = "sampling" if out.last_write_age is not None and out.last_write_age <= stale_after else "idle"
    return out


def _count_rows(path: Path) -> int:
    """Complete non-empty lines of a manifest (a torn last line, without its newline, is not counted)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    return sum(1 for line in data.split(b"\n")[:-1] if line.strip())


# ---------------------------------------------------------------------------------------------------- the table


def format_table(status: Status) -> str:
    """An aligned table: one line per run, then one per sample folder; notes at the end of their line."""
    head = f"{status.root}  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.now))}"
    run_rows = [("run", "state", "kimg", "%", "img/s", "ETA", "checkpoint", "snapshot", "note")]
    for r in status.runs:
        seen = 0 if r.state == "not started" and r.total_nimg else r.nimg
        kimg = f"{_kimg(seen)}/{_kimg(r.total_nimg)}" if seen is not None else "-"
        eta = "-" if r.eta_seconds is None else _duration(r.eta_seconds)
        if r.eta_seconds is not None and r.state != "running":
            eta = f"({eta})"  # compute time still needed, not a finishing time
        ckpt = f"{r.checkpoint} ({_duration(r.checkpoint_age)} ago)" if r.checkpoint else "-"
        snap = [f"FID {r.fid:.2f} @{r.fid_kimg:g}kimg"] if r.fid is not None else []
        snap += [f"{r.grid} ({_duration(r.grid_age)} ago)"] if r.grid else []
        run_rows.append((r.name, r.state, kimg, "-" if r.percent is None else f"{r.percent:.0f}%",
                         "-" if r.images_per_sec is None else f"{r.images_per_sec:.3g}", eta, ckpt,
                         ", ".join(snap) or "-", _run_note(r, status.now)))
    sample_rows = [("samples", "state", "shards", "images", "%", "merged", "last write", "note")]
    for s in status.samples:
        shards = f"{s.shards_done}/{s.num_shards if s.num_shards else '?'}"
        images = f"{s.images}/{s.planned if s.planned is not None else '?'}"
        pct = f"{100 * s.images / s.planned:.0f}%" if s.planned else "-"
        age = "-" if s.last_write_age is None else f"{_duration(s.last_write_age)} ago"
        sample_rows.append((s.model, s.state, shards, images, pct, "yes" if s.merged else "no", age,
                            "; ".join(s.notes)))
    parts = [head, ""]
    parts += _align(run_rows) if status.runs else ["no run folders"]
    parts += [""] + (_align(sample_rows) if status.samples else ["no sample folders"])
    return "\n".join(parts)


def _run_note(r: RunStatus, now: float) -> str:
    words = []
    if r.state == "stopped":
        words.append(f"will continue ({r.reason})" if r.reason else "will continue")
    elif r.state == "failed" and r.reason:
        words.append(r.reason if len(r.reason) <= 80 else r.reason[:77] + "...")
    elif r.state == "no heartbeat" and r.heartbeat_age is not None:
        words.append(f"nothing written for {_duration(r.heartbeat_age)}; was the job killed?")
    if r.job_id:
        words.append(f"job {r.job_id}")
    if r.state == "running" and r.deadline is not None:
        words.append(f"stops for requeue in {_duration(r.deadline - now)}")
    return "; ".join(words + r.notes)


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _kimg(nimg: int | None) -> str:
    return "?" if nimg is None else f"{nimg / 1000:g}"


def _duration(seconds: float | None) -> str:
    """Seconds as ``42s``, ``7m05s``, ``3h12m`` or ``2d04h``."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# ---------------------------------------------------------------------------------------------------- small readers


def _read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file's content, ``None`` if absent; an unreadable one adds a note and gives ``None``."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        notes.append(f"{path.name}: unreadable ({type(err).__name__})")
        return None


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders, sorted, without hidden ones (``.superseded``) or the trainer's ``superseded``."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and p.name != "superseded")
    except OSError:
        return []


def _newest(folder: Path, pattern: re.Pattern) -> Path | None:
    try:
        names = sorted(p.name for p in folder.iterdir() if pattern.match(p.name))
    except OSError:
        return None
    return folder / names[-1] if names else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _number(d: Any, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

"""Paper-vs-ours tables: every row of one of the paper's tables (``paper_tables.csv``) next to our metrics.

Torch-free. A *mapping* says which metrics file stands for which paper row: ``{model id: {"table", "block",
"setting", "row" (optional case-insensitive substring of the paper's row name), "steps" (optional)}}``; the workflow
derives it from its config, with the planned ``resolution`` of each row and, for a sweep row, ``sweep`` (the swept
preset value, e.g. ``guidance=3.5``). Paper rows without a metrics file keep empty "ours" cells; metrics files that
match no paper row become "ours only" rows (e.g. a data-aided FLUX student, which the paper does not report); a sweep
row is a row of its own after the paper's, next to the paper numbers of the row it varies.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PAPER_CSV = Path(__file__).resolve().parents[1] / "workflow" / "resources" / "paper_tables.csv"
# Paper column -> key of our metrics record (``sidrepro evaluate`` writes fid and clip_score; others when measured).
METRICS: dict[str, str] = {"FID_coco10k": "fid", "CLIP_vitg14": "clip_score", "GenEval_overall": "geneval",
                           "Aesthetic": "aesthetic", "HPSv2": "hpsv2", "ImageReward": "image_reward",
                           "PickScore": "pickscore"}
# The metrics measured outside ``sidrepro evaluate``, each in a score file of its own.
SCORE_KEYS = tuple(k for k in METRICS.values() if k not in ("fid", "clip_score"))
SETTINGS = ("teacher", "data-free", "data-aided", "baseline-distilled")
# steps/resolution_paper: as printed (resolution often "inferred"); resolution/steps/guidance_ours: what our row was
# sampled with; sweep: the preset value a sweep row changes (``guidance=3.5``), empty for the config's own rows.
ROW_COLUMNS = ["run", "paper_version", "table", "block", "row", "setting", "steps", "params_B", "resolution_paper",
               "resolution_ours", "steps_ours", "guidance_ours", "sweep", "source", "model", "protocol", "num_images",
               "complete", "snapshot_kimg", "selected_by", "last_snapshot", "provenance", "metrics_file",
               "score_files"]


def read_paper(path: Path = PAPER_CSV) -> list[dict[str, str]]:
    """The paper's rows as printed, one dict per row (all values strings, empty = not in the paper)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table_ids(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """The table ids present in ``rows`` (e.g. table1, table2), sorted."""
    return sorted({r["table"] for r in rows})


def load_mapping(text_or_path: str) -> dict[str, dict[str, Any]]:
    """A mapping from inline JSON or a JSON file; each entry needs ``block`` and ``setting``."""
    text = text_or_path.strip()
    data = json.loads(text if text.startswith("{") else Path(text).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the mapping must be a JSON object {model id: {block, setting, ...}}")
    for model, entry in data.items():
        missing = [k for k in ("block", "setting") if k not in entry]
        if missing:
            raise ValueError(f"mapping entry {model!r} lacks {', '.join(missing)}")
        if entry["setting"] not in SETTINGS:
            raise ValueError(f"mapping entry {model!r}: setting {entry['setting']!r} is not one of "
                             f"{', '.join(SETTINGS)}")
    return data


def _sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _matches(row: Mapping[str, str], entry: Mapping[str, Any]) -> bool:
    if row["block"] != entry["block"] or row["setting"] != entry["setting"]:
        return False
    if entry.get("row") and str(entry["row"]).lower() not in row["row"].lower():
        return False
    return not (entry.get("steps") is not None and row["steps"] != str(entry["steps"]))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _resolution(model: str, record: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The resolution a row's images were generated at: the metrics record's, else its sample manifest's first row,
    else the mapping's plan. Samples drawn at another resolution than planned are an error (the table would mix)."""
    measured = record.get("resolution")
    manifest = Path(str(record.get("sample_manifest", "")))
    if measured is None and record.get("sample_manifest") and manifest.is_file():
        with manifest.open(encoding="utf-8") as f:
            first = f.readline()
        measured = json.loads(first).get("resolution") if first.strip() else None
    planned = entry.get("resolution")
    if measured is not None and planned is not None and int(measured) != int(planned):
        raise ValueError(f"{model}: its samples were generated at {measured} px but its table block samples at "
                         f"{planned} px; sample it again (the workflow does so when the block's resolution changes)")
    value = measured if measured is not None else planned
    return "" if value is None else str(int(value))


def _selection_columns(sel: Mapping[str, Any] | None) -> dict[str, str]:
    """Which generator snapshot a student row reports, the rule that chose it, and the run's last snapshot's
    numbers on the same captions (``sidrepro export --select``); empty for teachers, baselines and unselected
    students."""
    if not sel:
        return {}
    last = sel["last"]
    return {"snapshot_kimg": _fmt(sel["kimg"]), "selected_by": f"{sel['rule']} on {sel['subset']} ({sel['protocol']})",
            "last_snapshot": f"{_fmt(last['kimg'])} kimg: FID {_fmt(last['fid'])}, CLIP {_fmt(last['clip'])}"}


def read_scores(files: Iterable[Path]) -> dict[str, dict[str, tuple[float, Path]]]:
    """Score files (``.../scores/{model id}/{metric}.json`` with ``{"metric": key, key: value}``, as ``sidrepro score``
    and ``sidrepro geneval score`` write them) as ``{model id: {metric key: (value, file)}}``."""
    out: dict[str, dict[str, tuple[float, Path]]] = {}
    for path in map(Path, files):
        record = json.loads(path.read_text(encoding="utf-8"))
        key = record.get("metric")
        if key not in SCORE_KEYS or not isinstance(record.get(key), (int, float)):
            raise ValueError(f"{path}: not a score file of one of {', '.join(SCORE_KEYS)} (needs 'metric' and its "
                             "value)")
        out.setdefault(path.parent.name, {})[key] = (float(record[key]), path)
    return out


def build_table(table: str, version: str, metrics: Iterable[Path], mapping: Mapping[str, Mapping[str, Any]], *,
                run: str = "paper", paper_csv: Path = PAPER_CSV, scores: Iterable[Path] = ()) -> list[dict[str, str]]:
    """Rows of ``table`` in paper ``version`` with paper / ours / diff per metric (see the module docstring).

    A metrics file's model id is its file stem; files absent from ``mapping`` are an error (a silent drop would
    hide a number), entries of another table are skipped. ``scores`` adds the metrics measured outside ``sidrepro
    evaluate`` (GenEval, preference scores; see ``read_scores``) to their model's row, each file named in the
    ``score_files`` column. Raises ``ValueError`` for an unknown table or version, and when one metrics file matches
    several paper rows.
    """
    extra_scores = read_scores(scores)
    paper = read_paper(paper_csv)
    if table not in table_ids(paper):
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(table_ids(paper))}")
    versions = sorted({r["paper_version"] for r in paper})
    if version not in versions:
        raise ValueError(f"unknown paper version {version!r}; valid: {', '.join(versions)}")
    rows = [dict(r) for r in paper if r["table"] == table and r["paper_version"] == version]
    ours: dict[int, tuple[str, Path, dict[str, Any]]] = {}
    extra: list[dict[str, str]] = []
    for path in sorted(Path(p) for p in metrics):
        model = path.stem
        if model not in mapping:
            raise ValueError(f"{path}: model {model!r} is not in the mapping ({', '.join(sorted(mapping))})")
        entry = mapping[model]
        if entry.get("table", table) != table:
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        found_scores = extra_scores.get(model, {})
        record = {**record, **{k: v for k, (v, _) in found_scores.items()},
                  "_score_files": ";".join(f"{k}={p}" for k, (_, p) in sorted(found_scores.items()))}
        hits = [i for i, r in enumerate(rows) if _matches(r, entry)]
        if len(hits) > 1:
            raise ValueError(f"{model}: matches {len(hits)} paper rows ({'; '.join(rows[i]['row'] for i in hits)}); "
                             "add 'row' or 'steps' to its mapping entry")
        if entry.get("sweep"):  # a row of its own, next to the paper numbers of the row whose preset it varies
            base = dict(rows[hits[0]]) if hits else {"block": entry["block"], "row": model,
                                                     "setting": entry["setting"], "steps": "", "params_B": ""}
            extra.append({**base, "row": f"{base['row']} [{entry['sweep']}]", "_source": "sweep",
                          "_ours": (model, path, record)})
        elif hits:
            if hits[0] in ours:
                raise ValueError(f"paper row {rows[hits[0]]['row']!r} is claimed by {ours[hits[0]][0]} and {model}")
            ours[hits[0]] = (model, path, record)
        else:  # the paper has no such row (e.g. data-aided FLUX): ours only
            extra.append({"paper_version": version, "table": table, "block": entry["block"], "row": model,
                          "setting": entry["setting"], "steps": str(record.get("steps") or ""), "params_B": "",
                          "_source": "ours only", "_ours": (model, path, record)})
    out = []
    for i, r in enumerate(rows + extra):
        found = ours.get(i) if i < len(rows) else r.pop("_ours")
        line = {"run": run, "paper_version": version, "table": table, "block": r["block"], "row": r["row"],
                "setting": r["setting"], "steps": r["steps"], "params_B": r["params_B"],
                "resolution_paper": r.get("resolution", ""), "resolution_ours": "", "steps_ours": "",
                "guidance_ours": "", "sweep": "", "source": "paper" if i < len(rows) else r.pop("_source"),
                "model": "", "protocol": "", "num_images": "", "complete": "", "snapshot_kimg": "",
                "selected_by": "", "last_snapshot": "", "provenance": "", "metrics_file": "", "score_files": ""}
        record: dict[str, Any] = {}
        if found is not None:
            model, path, record = found
            line.update(resolution_ours=_resolution(model, record, mapping[model]),
                        steps_ours=_fmt(record.get("steps")), guidance_ours=_fmt(record.get("guidance")),
                        sweep=str(mapping[model].get("sweep", "")))
            line.update(model=model, protocol=str(record.get("protocol_id", "")),
                        num_images=str(record.get("num_images", "")), complete=str(record.get("complete", "")),
                        provenance=_sha12(path), metrics_file=str(path), score_files=record["_score_files"],
                        **_selection_columns(record.get("selection")))
        for col, key in METRICS.items():
            paper_value = r.get(col, "")
            mine = record.get(key)
            line[f"{col}_paper"] = paper_value
            line[f"{col}_ours"] = _fmt(mine)
            line[f"{col}_diff"] = _fmt(mine - float(paper_value)) if mine is not None and paper_value else ""
        out.append(line)
    return out


def columns() -> list[str]:
    """The output columns, in order."""
    return ROW_COLUMNS + [f"{c}_{k}" for c in METRICS for k in ("paper", "ours", "diff")]


def write_table(rows: list[dict[str, str]], out: Path) -> Path:
    """Write ``rows`` as CSV to ``out`` atomically (a temporary sibling, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns())
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return out


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def table_metrics(rows: list[dict[str, str]]) -> dict[str, Any]:
    """The measured rows as nested JSON for ``dvc metrics show/diff``: ``{"rows": {model id: {metric: {paper, ours,
    diff}}}}`` plus each row's labels and provenance id (DVC lists the numbers and ignores the strings)."""
    out: dict[str, Any] = {}
    for r in rows:
        if not r["model"]:
            continue
        entry: dict[str, Any] = {k: r[k] for k in ("block", "row", "setting", "steps", "resolution_ours", "steps_ours",
                                                   "guidance_ours", "sweep", "protocol", "provenance")}
        entry["num_images"] = int(r["num_images"]) if r["num_images"] else None
        for col in METRICS:
            if r[f"{col}_ours"]:
                entry[col] = {k: _number(r[f"{col}_{k}"]) for k in ("paper", "ours", "diff")}
        out[r["model"]] = entry
    first = rows[0] if rows else {}
    return {"run": first.get("run", ""), "table": first.get("table", ""),
            "paper_version": first.get("paper_version", ""), "rows": out}

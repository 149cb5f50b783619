"""How a workflow config's table rows are measured: one resolution per table block, the sweep rows of a preset value,
and which score columns a paper table version has. Torch-free: ``workflow/rules/common.smk`` and ``sidrepro plan``
read it, so the workflow and the plan agree.

- **Blocks**: every row of a table block (teacher, its students, the block's baselines) samples at one resolution:
  ``blocks.<block>.resolution`` in the config, else the block's teacher's (its registry preset), else the one its
  baselines share. A baseline may say otherwise with its own ``resolution`` (a per-row override). The students are
  distilled at the block's resolution (``--set resolution=R`` where it differs from the teacher's preset).
- **Sweeps**: ``sweep: {model: {key: [values]}}`` adds one row per value, with the model id
  ``{row id}@{key}={value}`` (e.g. ``teacher--tiny-sd3@guidance=3.5``). Only the sampling values of a teacher or
  baseline row can be swept (``SWEEP_KEYS``); distillation values (``cfg_eval_real``, ...) would need a distillation
  per value and are refused.
- **Score columns**: a metric is a column of (table, version) when ``paper_tables.csv`` prints a value for it in a
  row of that table version (Table 2 of v2 has no GenEval); only those columns are measured for the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .tables import METRICS
from .teachers.registry import BASELINES, TEACHERS

# Sweepable key -> (teacher registry field, baseline registry field): what `sidrepro sample --guidance/--steps` sets.
SWEEP_KEYS: dict[str, tuple[str, str]] = {"guidance": ("sample_guidance", "guidance"),
                                          "steps": ("sample_steps", "steps")}
# Pixels a family's generation resolution must be a multiple of: the VAE's downsampling times the transformer's patch
# (SANA's DC-AE compresses 32x with patch 1; SD3 and FLUX: an 8x VAE with 2x2 patches or packing).
RESOLUTION_MULTIPLE: dict[str, int] = {"sana": 32, "sana_sprint": 32, "sd3": 16, "flux": 16}
MAX_RESOLUTION = 4096
_SWEEP_ID = re.compile(r"^(?P<base>.+)@(?P<key>[a-z_]+)=(?P<value>[0-9.e+-]+)$")


# ---------------------------------------------------------------- score columns

def paper_columns(paper_rows: Iterable[Mapping[str, str]], table: str, version: str) -> list[str]:
    """Metric keys (``tables.METRICS`` values) that ``table`` prints in paper ``version``: those with a value in at
    least one of its rows."""
    rows = [r for r in paper_rows if r["table"] == table and r["paper_version"] == version]
    return [key for col, key in METRICS.items() if any(r.get(col, "") for r in rows)]


def table_score_keys(config: Mapping[str, Any], table: str, paper_rows: Iterable[Mapping[str, str]]) -> list[str]:
    """The ``tables.scores`` keys that are columns of ``table`` in the config's ``tables.version``."""
    present = paper_columns(paper_rows, table, config["tables"]["version"])
    return [k for k in config["tables"].get("scores", []) if k in present]


# ---------------------------------------------------------------- model ids

def split_sweep(model: str) -> tuple[str, tuple[str, str] | None]:
    """``(row id, (key, value) or None)`` of a model id: ``teacher--x@guidance=3.5`` -> ``("teacher--x",
    ("guidance", "3.5"))``."""
    m = _SWEEP_ID.match(model)
    return (model, None) if m is None else (m["base"], (m["key"], m["value"]))


def _fmt(key: str, value: float | int) -> str:
    return str(int(value)) if key == "steps" else f"{float(value):g}"


def _row_id(config: Mapping[str, Any], name: str) -> str:
    return f"teacher--{name}" if name in config["teachers"] else f"baseline--{name}"


def sweep_ids(config: Mapping[str, Any], table: str | None = None) -> list[str]:
    """Model ids of every sweep row (``{row id}@{key}={value}``), optionally only those of one table."""
    ids = []
    for name, keys in config.get("sweep", {}).items():
        entry = config["teachers"].get(name) or config["baselines"].get(name)
        if entry is None or (table is not None and entry["table"] != table):
            continue
        ids += [f"{_row_id(config, name)}@{key}={_fmt(key, v)}" for key, values in keys.items() for v in values]
    return ids


def swept_rows(config: Mapping[str, Any]) -> list[str]:
    """Row ids (``teacher--x``, ``baseline--y``) of the models the config sweeps."""
    return [_row_id(config, name) for name in config.get("sweep", {})]


# ---------------------------------------------------------------- resolutions

def check_resolution(what: str, family: str, resolution: int) -> int:
    """``resolution`` if a model of ``family`` can generate at it; else a ``ValueError`` naming ``what``."""
    step = RESOLUTION_MULTIPLE[family]
    if not (step <= resolution <= MAX_RESOLUTION) or resolution % step:
        raise ValueError(f"config {what}: resolution {resolution} is not one the {family} family can take (a "
                         f"multiple of {step} px between {step} and {MAX_RESOLUTION}); e.g. "
                         f"{max(step, round(resolution / step) * step)}")
    return resolution


def _members(config: Mapping[str, Any], table: str, block: str, kind: str) -> list[str]:
    return [n for n, e in config[kind].items() if (e["table"], e["block"]) == (table, block)]


def block_resolution(config: Mapping[str, Any], table: str, block: str) -> int | None:
    """The one resolution of a table block: ``blocks.<block>.resolution``, else its teachers' preset, else the one
    its baselines share; ``None`` for a block no row of the config is in. Rows that disagree are an error naming
    the setting that settles it."""
    own = config.get("blocks", {}).get(block, {}).get("resolution")
    if own is not None:
        return int(own)
    for kind, registry in (("teachers", TEACHERS), ("baselines", BASELINES)):
        names = [n for n in _members(config, table, block, kind)
                 if kind == "teachers" or "resolution" not in config[kind][n]]
        found = {n: registry[n].resolution for n in names}
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{n} {r} px" for n, r in sorted(found.items()))
            raise ValueError(f"config: the {kind} of block {block!r} ({table}) sample at different resolutions "
                             f"({listed}); set blocks.{block!r}.resolution so that the block has one")
        if found:
            return next(iter(found.values()))
    return None


def row_resolution(config: Mapping[str, Any], model: str) -> int:
    """The generation resolution of one measured row (a model id of the workflow, sweep rows included)."""
    base, _ = split_sweep(model)
    kind, _, name = base.partition("--")
    if kind == "baseline":
        entry = config["baselines"][name]
        if "resolution" in entry:
            return int(entry["resolution"])
        res = block_resolution(config, entry["table"], entry["block"])
        return BASELINES[name].resolution if res is None else res
    teacher = name if kind == "teacher" else kind
    entry = config["teachers"][teacher]
    res = block_resolution(config, entry["table"], entry["block"])
    return TEACHERS[teacher].resolution if res is None else res


def distill_resolution(config: Mapping[str, Any], teacher: str, overrides: Mapping[str, Any]) -> dict[str, int]:
    """``{"resolution": R}`` when the teacher's block samples at R px and its preset trains elsewhere, else ``{}``.
    A ``resolution`` among the distillation overrides that disagrees with the block is an error."""
    res = row_resolution(config, f"teacher--{teacher}")
    if "resolution" in overrides and int(overrides["resolution"]) not in (0, res):
        block = config["teachers"][teacher]["block"]
        raise ValueError(f"config: teacher {teacher!r} is distilled at resolution={overrides['resolution']} (a "
                         f"distill override) but its block {block!r} samples at {res} px; set "
                         f"blocks.{block!r}.resolution instead")
    return {} if res == TEACHERS[teacher].resolution else {"resolution": res}


def needs_resolution_flag(config: Mapping[str, Any], model: str) -> bool:
    """Whether a teacher or baseline row samples at another resolution than its registry preset."""
    kind, _, name = split_sweep(model)[0].partition("--")
    if kind not in ("teacher", "baseline"):
        return False
    return row_resolution(config, model) != (TEACHERS if kind == "teacher" else BASELINES)[name].resolution


def sample_flags(config: Mapping[str, Any], model: str) -> str:
    """The `sidrepro sample` flags that make a teacher or baseline row sample as the config says: ``--resolution``
    where its block's resolution is not the preset's, ``--guidance``/``--steps`` of a sweep row. Students sample at
    the resolution they were distilled at (the block's), so they get none."""
    base, sweep = split_sweep(model)
    kind = base.partition("--")[0]
    if kind not in ("teacher", "baseline"):
        return ""
    flags = [f"--resolution {row_resolution(config, model)}"] if needs_resolution_flag(config, model) else []
    if sweep is not None:
        flags.append(f"--{sweep[0]} {sweep[1]}")
    return " ".join(flags)


# ---------------------------------------------------------------- validation

def _preset_value(config: Mapping[str, Any], name: str, key: str) -> float:
    teacher_field, baseline_field = SWEEP_KEYS[key]
    return getattr(TEACHERS[name], teacher_field) if name in config["teachers"] else \
        getattr(BASELINES[name], baseline_field)


def _check_sweep(config: Mapping[str, Any]) -> None:
    for name, keys in config.get("sweep", {}).items():
        if name not in config["teachers"] and name not in config["baselines"]:
            rows = ", ".join([*config["teachers"], *config["baselines"]])
            raise ValueError(f"config sweep: {name!r} is not a teacher or baseline of this config ({rows})")
        for key, values in keys.items():
            if key not in SWEEP_KEYS:
                raise ValueError(f"config sweep.{name}: {key!r} is not a preset value that can be swept; allowed: "
                                 f"{', '.join(SWEEP_KEYS)} (the row's sampling guidance scale and steps). Distillation "
                                 "values such as cfg_eval_real need a distillation per value: put them in the "
                                 "teacher's `set:` instead")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or \
                        (key == "steps" and (int(v) != v or v < 1)):
                    need = "a whole number >= 1" if key == "steps" else "a number >= 0"
                    raise ValueError(f"config sweep.{name}.{key}: {v!r} is not {need}")
            preset = _preset_value(config, name, key)
            formatted = [_fmt(key, v) for v in values]
            if len(set(formatted)) != len(formatted):
                raise ValueError(f"config sweep.{name}.{key}: values repeat ({', '.join(formatted)})")
            if _fmt(key, preset) in formatted:
                raise ValueError(f"config sweep.{name}.{key}: {_fmt(key, preset)} is the preset's own value, which "
                                 f"the row {_row_id(config, name)} already measures; leave it out")


def check_config(config: Mapping[str, Any], paper_rows: Iterable[Mapping[str, str]]) -> None:
    """Errors that name the key for what the schema cannot see: a block the paper table does not have, a resolution
    a row's family cannot take, rows of one block at several resolutions, and a sweep over something that is not
    a sampling preset value of a configured row."""
    version = config["tables"]["version"]
    paper_blocks: dict[str, set[str]] = {}
    for r in paper_rows:
        if r["paper_version"] == version:
            paper_blocks.setdefault(r["table"], set()).add(r["block"])
    used: set[str] = set()
    for kind in ("teachers", "baselines"):
        for name, entry in config[kind].items():
            valid = paper_blocks.get(entry["table"], set())
            if entry["block"] not in valid:
                raise ValueError(f"config {kind}.{name}: unknown block {entry['block']!r} of {entry['table']} "
                                 f"(paper {version}); valid: {', '.join(sorted(valid)) or 'none'}")
            used.add(entry["block"])
    for block in config.get("blocks", {}):
        if block not in used:
            raise ValueError(f"config blocks: unknown block {block!r}; the blocks of this config's rows: "
                             f"{', '.join(sorted(used))}")
    for name, entry in config["teachers"].items():
        check_resolution(f"teachers.{name} (block {entry['block']!r})", TEACHERS[name].family,
                         row_resolution(config, f"teacher--{name}"))
    for name, entry in config["baselines"].items():
        where = (f"baselines.{name}.resolution" if "resolution" in entry
                 else f"baselines.{name} (block {entry['block']!r})")
        check_resolution(where, BASELINES[name].family, row_resolution(config, f"baseline--{name}"))
    _check_sweep(config)

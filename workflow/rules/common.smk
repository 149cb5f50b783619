"""Config validation, model naming, paths and every input/params function of the rule files (rule files hold rules
only, as `snakemake --lint` asks).

Model ids (the stems of sample folders and metrics files):
  ``{teacher}--{setting}`` a distilled student, ``teacher--{teacher}`` a teacher row, ``baseline--{name}`` a baseline.
"""

import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

from sidrepro.teachers.registry import BASELINES, TEACHERS

validate(config, schema="../schemas/config.schema.yaml")

ROOT = config["root"]
ZOO = config["zoo"]
SNAPSHOTS = config["snapshots"]
USE_ZOO = config["source"] == "zoo"
PROTOCOL = config["evaluate"]["protocol"]
NUM_SHARDS = config["sample"]["num_shards"]
TINY_CLIP = config["evaluate"].get("tiny_clip", False)
CLIP_DIR = f"{ROOT}/clip"
CLIP_CACHE = f"{CLIP_DIR}/hub"  # the protocol's open_clip weights, fetched by `sidrepro fetch-clip` (data.smk)
CLIP_STAMP = f"{CLIP_DIR}/{PROTOCOL}.json"
TABLES = sorted({t["table"] for t in config["teachers"].values()} | {b["table"] for b in config["baselines"].values()})
ENV = "../envs/sidrepro.yaml"

DATA = config["data"]
SYNTHETIC_COCO = "synthetic" in DATA["coco"]
SYNTHETIC_SHARDS = "synthetic" in DATA["shards"]
# data.shards.dataset: a hub dataset repo that `sidrepro fetch-dataset` pins and fetches into `dir` (paper).
DATASET = DATA["shards"].get("dataset")
DATASET_DIR = DATA["shards"].get("dir", f"data/{DATASET.split('/')[-1]}") if DATASET else None
DATASET_FILES = DATA["shards"].get("files", "data/train_*.parquet")
DATASET_STAMP = f"{ROOT}/data/shards.json"
# data.prompts.from_shards: the prompt file is made from that caption column of the shards (`sidrepro prompts`).
PROMPTS_FROM_SHARDS = DATA["prompts"].get("from_shards")
MADE_PROMPTS = "list" in DATA["prompts"] or PROMPTS_FROM_SHARDS is not None
PROMPTS = f"{ROOT}/data/prompts.txt" if MADE_PROMPTS else DATA["prompts"]["file"]
if SYNTHETIC_SHARDS:
    SHARDS = f"{ROOT}/data/shards"
elif DATASET:
    SHARDS = os.path.join(DATASET_DIR, os.path.dirname(DATASET_FILES))
else:
    SHARDS = DATA["shards"]["dir"]
if PROMPTS_FROM_SHARDS and SYNTHETIC_SHARDS:  # the synthetic shards take their captions from the prompt list
    raise ValueError("config data.prompts.from_shards needs real shards (data.shards.dataset or .dir), not synthetic")
COCO_DIR = f"{ROOT}/data/coco" if SYNTHETIC_COCO else DATA["coco"]["dir"]
REFERENCE = f"{ROOT}/reference"

# Fail at parse time (not after hours of training) when the config names a model the registry does not know.
for _name in config["teachers"]:
    if _name not in TEACHERS:
        raise ValueError(f"config teachers: unknown teacher {_name!r}; see `sidrepro teachers`")
    if TEACHERS[_name].zoo != USE_ZOO:
        raise ValueError(f"config teachers: {_name!r} is {'a zoo' if TEACHERS[_name].zoo else 'a hub'} model "
                         f"but source is {config['source']!r}")
for _name in config["baselines"]:
    if _name not in BASELINES:
        raise ValueError(f"config baselines: unknown baseline {_name!r}; see `sidrepro teachers`")

# Rules call `sidrepro` and `python` from the environment Snakemake runs in (the project venv), activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')


# ---------------------------------------------------------------- models and their files

def repo_folder(repo_id):
    """Local folder of a hub repo (``sidrepro fetch`` layout: owner--name) or of a zoo entry."""
    if USE_ZOO:
        return f"{ZOO}/{repo_id}"
    return f"{SNAPSHOTS}/{repo_id.replace(chr(47), '--')}"  # chr(47): the slash of owner/name


def model_marker(name):
    """The files that prove a teacher's or baseline's weights are on disk (zoo markers or the fetch stamp)."""
    if USE_ZOO:
        entry = TEACHERS.get(name) or BASELINES[name]
        return [f"{ZOO}/{r}/zoo.json" for r in (entry.hub_id, getattr(entry, "lora_id", "")) if r]
    return [f"{ROOT}/fetched/{name}.done"]


def zoo_entries():
    """The zoo folders every configured teacher and baseline needs."""
    names = set()
    for n in list(config["teachers"]) + list(config["baselines"]):
        entry = TEACHERS.get(n) or BASELINES[n]
        names.update(r for r in (entry.hub_id, getattr(entry, "lora_id", "")) if r)
    return sorted(names)


def teacher_snapshot(name):
    """The teacher's local folder."""
    return repo_folder(TEACHERS[name].hub_id)


def model_ids(table=None):
    """Model ids of every row we measure, optionally only those of one table."""
    ids = []
    for t, entry in config["teachers"].items():
        if table is None or entry["table"] == table:
            ids += [f"{t}--{s}" for s in entry["settings"]]
            if entry.get("teacher_row", True):
                ids.append(f"teacher--{t}")
    for b, entry in config["baselines"].items():
        if table is None or entry["table"] == table:
            ids.append(f"baseline--{b}")
    return ids


def model_kind(model):
    """('student', teacher, setting), ('teacher', name) or ('baseline', name) for a model id."""
    kind, _, name = model.partition("--")
    if kind in ("teacher", "baseline"):
        return (kind, name)
    return ("student", kind, name)


def res(rule_name, key, default):
    """A per-rule resource from the config (``resources.<rule>.<key>``)."""
    return config["resources"].get(rule_name, {}).get(key, default)


# ---------------------------------------------------------------- data

def prompt_inputs():
    """The prompt file when a rule makes it (list or from_shards); external files are parameters only."""
    return [PROMPTS] if MADE_PROMPTS else []


def shard_inputs():
    """What proves the shards are there: the synthetic shard files, the dataset fetch stamp, or nothing (external)."""
    if DATASET:
        return [DATASET_STAMP]
    if not SYNTHETIC_SHARDS:
        return []
    return [f"{SHARDS}/train_{k:03d}.parquet" for k in range(DATA["shards"]["synthetic"])]


def coco_inputs():
    """The synthetic COCO annotation file when a rule makes it; the real COCO is downloaded by `sidrepro coco`."""
    return [f"{COCO_DIR}/annotations/captions_val2014.json"] if SYNTHETIC_COCO else []


# ---------------------------------------------------------------- distill

def run_folder(teacher, setting):
    """The run folder of one distillation (never an output, so Snakemake never deletes it)."""
    return f"{ROOT}/runs/{teacher}/{setting}"


def distill_inputs(wildcards):
    """Teacher files, data, and for data-aided the finished data-free run it continues from."""
    inputs = model_marker(wildcards.teacher)
    if wildcards.setting == "data-free":
        return inputs + prompt_inputs()
    return inputs + shard_inputs() + [f"{ROOT}/runs/{wildcards.teacher}/data-free.done"]


def distill_args(wildcards):
    """Data flags and `--set` overrides: the config's global, then per-teacher and per-setting values."""
    entry = config["teachers"][wildcards.teacher]
    values = {**config["distill"].get("set", {}), **entry.get("set", {}),
              **entry.get("set_by_setting", {}).get(wildcards.setting, {})}
    if wildcards.setting == "data-free":
        data = f"--prompts {shlex.quote(PROMPTS)}"
    else:
        data = f"--shards {shlex.quote(SHARDS)}"
        values["init_from"] = run_folder(wildcards.teacher, "data-free")
    return f"{data} " + " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in values.items())


def distill_res(key, default):
    """A distill resource: the teacher's own value, else the rule's, else ``default``."""
    def get(wildcards):
        return config["teachers"][wildcards.teacher].get("resources", {}).get(key, res("distill", key, default))
    return get


# ---------------------------------------------------------------- sample, evaluate, tables

def sample_inputs(wildcards):
    """What a shard of one model needs: the reference and the model's files."""
    kind = model_kind(wildcards.model)
    inputs = [f"{REFERENCE}/manifest.json"]
    if kind[0] == "student":
        return inputs + [f"{ROOT}/students/{wildcards.model}"]
    return inputs + model_marker(kind[1])


def sample_who(wildcards):
    """The `sidrepro sample` model flags of one model id."""
    kind = model_kind(wildcards.model)
    if kind[0] == "student":
        return f"--student {ROOT}/students/{wildcards.model}"
    if kind[0] == "teacher":
        return f"--teacher {kind[1]} --snapshot {teacher_snapshot(kind[1])}"
    entry = BASELINES[kind[1]]
    lora = f" --lora {repo_folder(entry.lora_id)}" if entry.lora_id else ""
    return f"--baseline {kind[1]} --snapshot {repo_folder(entry.hub_id)}{lora}"


def parent_folder(wildcards, input=None, output=None):
    """The folder of a rule's first output (the sample folder of a shard stamp or merged manifest)."""
    return os.path.dirname(output[0])


def samples_folder(wildcards, input):
    """The sample folder of an evaluate job (the folder of its merged manifest)."""
    return os.path.dirname(input.samples)


def table_figures(wildcards):
    """The report figures of a table: a sample grid per measured model and the curves of each distillation run."""
    models = model_ids(wildcards.table)
    curves = [f"{ROOT}/report/curves/{m}.png" for m in models if model_kind(m)[0] == "student"]
    return [f"{ROOT}/report/grids/{m}.png" for m in models] + curves


def table_mapping(table):
    """Model id -> paper row selector (block, setting, optional row substring and steps) for `sidrepro table`."""
    out = {}
    for t, entry in config["teachers"].items():
        if entry["table"] != table:
            continue
        for s in entry["settings"]:
            out[f"{t}--{s}"] = {"table": table, "block": entry["block"], "setting": s}
        out[f"teacher--{t}"] = {"table": table, "block": entry["block"], "setting": "teacher"}
    for b, entry in config["baselines"].items():
        if entry["table"] == table:
            out[f"baseline--{b}"] = {"table": table, "block": entry["block"], "setting": "baseline-distilled",
                                     **{k: entry[k] for k in ("row", "steps") if k in entry}}
    return out

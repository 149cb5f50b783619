"""Config validation, model naming, paths and every input/params function of the rule files (rule files hold rules
only, as `snakemake --lint` asks).

Model ids (the stems of sample folders and metrics files):
  ``{teacher}--{setting}`` a distilled student, ``teacher--{teacher}`` a teacher row, ``baseline--{name}`` a baseline,
  ``{row id}@{key}={value}`` a sweep row (``teacher--tiny-sd3@guidance=3.5``: the row with one preset value changed).
Every row of a table block samples at the block's one resolution (sidrepro/table_rows.py).
"""

import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

from sidrepro.envs import env_dir_for, envs_root
from sidrepro.table_rows import (check_config, distill_resolution, row_resolution, sample_flags,
                                 split_sweep, sweep_ids, swept_rows, table_score_keys)
from sidrepro import selection as _selection
from sidrepro.tables import read_paper
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
# Rules whose jobs take seconds: they run where Snakemake runs, not as cluster jobs (see the Snakefile).
LOCAL_RULES = ["prompts", "geneval_prompts", "merge_samples", "geneval_merge", "sample_grid", "training_curves",
               "fid_curve", "table", "sweep_table"]

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
# Separate pinned venvs (GenEval, HPSv2, ImageReward): outside the checkout, one per pin file content, reused by every
# clone and config (`envs:` in the config, else $SIDREPRO_ENVS, else ~/.cache/sidrepro/envs).
ENVS = str(envs_root(config.get("envs")))

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
# The paper's rows (the table rule's input): which blocks and score columns each table version has.
PAPER_CSV = "workflow/resources/paper_tables.csv"
PAPER_ROWS = read_paper(PAPER_CSV)
check_config(config, PAPER_ROWS)  # unknown blocks, resolutions a family cannot take, sweeps of non-preset values

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


def model_ids():
    """Model ids of everything the workflow can sample: the tables' rows and the sweep rows."""
    return table_model_ids() + sweep_ids(config)


def table_model_ids(table=None):
    """Model ids of every row of the tables (no sweep rows), optionally only those of one table."""
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
    """('student', teacher, setting), ('teacher', name) or ('baseline', name) for a model id (a sweep row's is its
    row's)."""
    kind, _, name = split_sweep(model)[0].partition("--")
    if kind in ("teacher", "baseline"):
        return (kind, name)
    return ("student", kind, name)


def model_table(model):
    """The table a model id's row is in."""
    kind = model_kind(model)
    return (config["baselines"] if kind[0] == "baseline" else config["teachers"])[kind[1]]["table"]


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
    """The synthetic COCO annotation file when a rule makes it; the real COCO is downloaded by `sidrepro fetch-coco`
    (the fetch_coco rule, whose stamp is in ``coco_fetch_inputs``)."""
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
    """Data flags and `--set` overrides: the config's global, then per-teacher and per-setting values, and the
    resolution of the teacher's table block where it is not the teacher's preset."""
    entry = config["teachers"][wildcards.teacher]
    values = {**config["distill"].get("set", {}), **entry.get("set", {}),
              **entry.get("set_by_setting", {}).get(wildcards.setting, {})}
    values.update(distill_resolution(config, wildcards.teacher, values))
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
    """The `sidrepro sample` model flags of one model id: the model, and for a teacher or baseline row its block's
    resolution where that is not its preset's and a sweep row's value (students sample where they were trained)."""
    kind = model_kind(wildcards.model)
    if kind[0] == "student":
        return f"--student {ROOT}/students/{wildcards.model}"
    flags = sample_flags(config, wildcards.model)
    if kind[0] == "teacher":
        return f"--teacher {kind[1]} --snapshot {teacher_snapshot(kind[1])} {flags}".rstrip()
    entry = BASELINES[kind[1]]
    lora = f" --lora {repo_folder(entry.lora_id)}" if entry.lora_id else ""
    return f"--baseline {kind[1]} --snapshot {repo_folder(entry.hub_id)}{lora} {flags}".rstrip()


def parent_folder(wildcards, input=None, output=None):
    """The folder of a rule's first output (the sample folder of a shard stamp or merged manifest)."""
    return os.path.dirname(output[0])


def samples_folder(wildcards, input):
    """The sample folder of an evaluate job (the folder of its merged manifest)."""
    return os.path.dirname(input.samples)


def table_figures(wildcards):
    """The report figures of a table: a sample grid per measured model, and the loss curves and FID per checkpoint of
    each distillation run."""
    models = table_model_ids(wildcards.table)
    students = [m for m in models if model_kind(m)[0] == "student"]
    curves = [f"{ROOT}/report/{kind}/{m}.{ext}" for m in students for kind, ext in
              (("curves", "png"), ("fid", "png"), ("fid", "csv"))]
    return [f"{ROOT}/report/grids/{m}.png" for m in models] + curves


def table_mapping(table):
    """Model id -> paper row selector (block, setting, optional row substring and steps) and the row's planned
    resolution, for `sidrepro table`."""
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
    for m, entry in out.items():
        entry["resolution"] = row_resolution(config, m)
    return out


# ---------------------------------------------------------------- sweeps (tables.smk: the sweep table)

SWEEP_TABLE = f"{config['results']}/sweep.csv"


def sweep_models():
    """The sweep rows and the rows they vary (the preset's own value), where the tables measure those."""
    measured = set(table_model_ids())
    return [m for m in swept_rows(config) if m in measured] + sweep_ids(config)


def sweep_mapping():
    """`sidrepro table` mapping of the sweep table: each row's entry of its table, a sweep row's with its value."""
    out = {}
    for table in TABLES:
        rows = table_mapping(table)
        for m in sweep_models():
            base, sweep = split_sweep(m)
            if base in rows:
                out[m] = {**rows[base], **({"sweep": "=".join(sweep)} if sweep else {})}
    return out


def sweep_scores():
    """The score files the sweep table waits for: its table's columns (``tables.scores``) for every row."""
    return [f"{ROOT}/scores/{m}/{k}.json" for m in sweep_models() for k in TABLE_SCORE_KEYS[model_table(m)]]



# ---------------------------------------------------------------- GenEval (geneval.smk)

# geneval.metadata: "official" (fetched at the pinned commit), "smoke" (a few lines written by
# workflow/scripts/geneval_smoke_metadata.py) or the path of a metadata file of your own.
GENEVAL = config.get("geneval", {})
GENEVAL_DIR = f"{ROOT}/geneval"
GENEVAL_SPEC = "workflow/envs/geneval.txt"
GENEVAL_ENV = str(env_dir_for(GENEVAL_SPEC, ENVS))
GENEVAL_ENV_STAMP = f"{GENEVAL_DIR}/env.json"
GENEVAL_SOURCE = GENEVAL.get("metadata", "official")
GENEVAL_METADATA = (f"{GENEVAL_DIR}/evaluation_metadata.jsonl" if GENEVAL_SOURCE in ("official", "smoke")
                    else GENEVAL_SOURCE)
GENEVAL_TINY = GENEVAL.get("models", "official") == "tiny"
GENEVAL_MODELS = f"{GENEVAL_DIR}/models/{'tiny' if GENEVAL_TINY else 'models'}.json"
GENEVAL_SHARDS = GENEVAL.get("num_shards", NUM_SHARDS)


def geneval_sample_inputs(wildcards):
    """What a GenEval shard of one model needs: the caption file and the model's files (no COCO reference)."""
    kind = model_kind(wildcards.model)
    inputs = [f"{GENEVAL_DIR}/captions.jsonl"]
    if kind[0] == "student":
        return inputs + [f"{ROOT}/students/{wildcards.model}"]
    return inputs + model_marker(kind[1])


def geneval_targets():
    """The GenEval metrics file of every row of the tables (the `geneval` target: whether or not a table prints it)."""
    return [f"{ROOT}/scores/{m}/geneval.json" for m in table_model_ids()]


# ---------------------------------------------------------------- preference scores (scores.smk)

# scores.weights: "official" (pinned hub files, `sidrepro score-weights`) or "tiny" (random offline models of the same
# classes, smoke). hpsv2 and image_reward run in venvs of their own pin files, built once under scores.envs.
SCORES = config.get("scores", {})
SCORERS = SCORES.get("scorers", ["aesthetic", "hpsv2", "image_reward", "pickscore"])
SCORER_OWN_ENV = ("hpsv2", "image_reward")  # the rest run in the main environment
SCORES_TINY = SCORES.get("weights", "official") == "tiny"
SCORER_DIR = f"{ROOT}/scorers"
SCORER_WEIGHTS = SCORES.get("weights_dir", f"{SCORER_DIR}/{'tiny' if SCORES_TINY else 'official'}")


def scorer_env_inputs(wildcards):
    """The stamp of the scorer's own environment (hpsv2, image_reward); nothing for main-env scorers."""
    return [f"{SCORER_DIR}/envs/{wildcards.scorer}.json"] if wildcards.scorer in SCORER_OWN_ENV else []


def scorer_env_flag(wildcards):
    """``--env DIR`` for a scorer with its own environment."""
    return f"--env {scorer_env_dir(wildcards.scorer)}" if wildcards.scorer in SCORER_OWN_ENV else ""


def scorer_env_dir(scorer):
    """The folder of a scorer's own environment (one per pin file content, shared by every checkout)."""
    return str(env_dir_for(f"workflow/envs/{scorer}.txt", ENVS))


def scorer_weights_inputs(wildcards):
    """Tiny weights of an own-env scorer are built by its package, so they need its environment."""
    return scorer_env_inputs(wildcards) if SCORES_TINY else []


def scorer_weights_args(wildcards):
    """`sidrepro score-weights` flags: tiny (with the env where needed) or the real files (HPS version)."""
    if SCORES_TINY:
        return f"--tiny {scorer_env_flag(wildcards)}"
    return f"--hps-version {SCORES.get('hps_version', 'v2.1')}" if wildcards.scorer == "hpsv2" else ""


def score_targets():
    """Every configured scorer's metrics file of every row of the tables (the `scores` target)."""
    return [f"{ROOT}/scores/{m}/{s}.json" for m in table_model_ids() for s in SCORERS]


# ---------------------------------------------------------------- tables

TABLE_SCORES = config["tables"].get("scores", [])
for _key in TABLE_SCORES:  # fail at parse time, not after the whole run, when a column cannot be filled
    if _key == "geneval" and not GENEVAL:
        raise ValueError("config tables.scores: geneval needs a `geneval:` section (see workflow/config/paper.yaml)")
    if _key != "geneval" and _key not in SCORERS:
        raise ValueError(f"config tables.scores: {_key!r} is not among scores.scorers ({', '.join(SCORERS)})")
# The columns a table measures: those of ``tables.scores`` that the table prints in ``tables.version`` (paper_tables.csv;
# Table 2 of v2 has no GenEval column, so no GenEval job runs for its rows).
TABLE_SCORE_KEYS = {t: table_score_keys(config, t, PAPER_ROWS) for t in TABLES}


def table_scores(wildcards):
    """The score files a table waits for: each of its columns among ``tables.scores`` for every row of the table."""
    return [f"{ROOT}/scores/{m}/{k}.json" for m in table_model_ids(wildcards.table)
            for k in TABLE_SCORE_KEYS.get(wildcards.table, [])]


# ---- prefetch

# data.coco.download: the fetch_coco rule (`sidrepro fetch-coco`) downloads COCO-2014 val into data.coco.dir and writes
# this stamp; coco_reference then prepares the reference from that folder with no network.
COCO_DOWNLOAD = bool(DATA["coco"].get("download", False)) and not SYNTHETIC_COCO
COCO_STAMP = f"{ROOT}/data/coco.json"
# The hub libraries' offline switches (huggingface_hub, transformers, datasets; diffusers and open_clip go through
# huggingface_hub): set for every job once the prefetch is complete (`offline_after_prefetch`).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def coco_fetch_inputs():
    """The COCO download stamp when the workflow downloads COCO; nothing for a synthetic or user-supplied folder."""
    return [COCO_STAMP] if COCO_DOWNLOAD else []


def prefetch_inputs():
    """What the configured run needs from the network, as the outputs of the jobs that download or install it
    (prefetch.smk): teacher and baseline snapshots, the image-text dataset, COCO-2014 val, the CLIP, scorer and
    GenEval weights, GenEval's metadata and the separate environments' pip installs. What is made offline (the zoo,
    synthetic data, tiny models) is not here."""
    out = [] if USE_ZOO else [m for n in [*config["teachers"], *config["baselines"]] for m in model_marker(n)]
    out += ([DATASET_STAMP] if DATASET else []) + coco_fetch_inputs() + ([] if TINY_CLIP else [CLIP_STAMP])
    if GENEVAL:
        out.append(GENEVAL_ENV_STAMP)
        out += [GENEVAL_METADATA] if GENEVAL_SOURCE == "official" else []
        out += [] if GENEVAL_TINY else [GENEVAL_MODELS]
    if SCORES:
        out += [f"{SCORER_DIR}/envs/{s}.json" for s in SCORERS if s in SCORER_OWN_ENV]
        out += [] if SCORES_TINY else [f"{SCORER_WEIGHTS}/{s}/scorer.json" for s in SCORERS]
    return out


def offline_after_prefetch():
    """When every prefetch output exists, put the hub libraries offline for every job of this run (``OFFLINE_ENV``,
    exported into Snakemake's own environment, which local jobs inherit and cluster jobs inherit and set again when
    they parse the workflow). A job that still reaches for the hub then fails at once with the libraries' offline
    error instead of waiting on network timeouts on a compute node without internet. A variable the user has set
    (e.g. ``HF_HUB_OFFLINE=0`` to force a fresh download) is left alone. Returns whether the run is offline."""
    if not all(os.path.exists(path) for path in prefetch_inputs()):
        return False
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    return True


# ---------------------------------------------------------------- snapshot selection (distill.smk, report.smk)
# evaluate.select: a run scores every generator snapshot as it trains, under the evaluation protocol (paper: the 10k
# evaluation captions, as the paper did; clean: the held-out captions), and the student of the table is the snapshot
# that `rule` chooses (sidrepro/selection.py).
SELECT = {"rule": "best-fid", **config["evaluate"].get("select", {})}
_selection.check_rule(SELECT["rule"])
_selection.check_protocol(PROTOCOL)
SELECT_INPUTS = [f"{REFERENCE}/manifest.json"] + ([f"{CLIP_DIR}/sidrepro-tiny-clip-seed0.pt"] if TINY_CLIP
                                                  else [CLIP_STAMP])


def select_args(wildcards):
    """`sidrepro distill` flags that score each snapshot as the run trains."""
    args = [f"--select-protocol {PROTOCOL}", f"--reference {shlex.quote(REFERENCE)}",
            f"--select-batch {SELECT.get('batch', config['sample'].get('batch', 8))}"]
    if SELECT.get("count"):
        args.append(f"--select-count {SELECT['count']}")
    if TINY_CLIP:
        args.append(f"--clip-model sidrepro-tiny-clip --clip-weights {CLIP_DIR}/sidrepro-tiny-clip-seed0.pt")
    return " ".join(args)

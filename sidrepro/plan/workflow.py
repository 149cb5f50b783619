"""The jobs a workflow config asks for, derived the way the rule files derive them (without Snakemake).

Every rule of ``workflow/rules/*.smk`` that the default target ``all`` reaches has a builder here that creates its
jobs on demand from the jobs that consume them, as Snakemake does, so the plan holds exactly the jobs of
``snakemake -n --forceall`` with the same wildcards, GPUs, nodes and runtimes (``tests/test_plan.py`` compares the
two for the paper and smoke configs). Model ids, table membership and resources follow ``workflow/rules/common.smk``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..table_rows import check_config, distill_resolution, table_score_keys
from ..tables import read_paper

REPO = Path(__file__).resolve().parents[2]
PAPER_CSV = REPO / "workflow" / "resources" / "paper_tables.csv"  # the table rule's input
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SETTINGS = ("data-free", "data-aided")
SCORER_OWN_ENV = ("hpsv2", "image_reward")
ALL_SCORERS = ("aesthetic", "hpsv2", "image_reward", "pickscore")

# rule -> (key of the config's `resources:` it reads, default GPUs or None when it asks for none, default runtime
# in minutes or None when it sets none, asks for the hub slot): the values of the rule files.
RULE_RESOURCES: dict[str, tuple[str, int | None, int | None, bool]] = {
    "fetch": ("fetch", None, 240, True),
    "fetch_dataset": ("fetch_dataset", None, 1440, True),
    "prompts_from_shards": ("prompts", None, 120, False),
    "fetch_clip": ("fetch_clip", None, 120, True),
    "fetch_coco": ("fetch_coco", None, 480, True),
    "coco_reference": ("coco_reference", 0, 240, False),
    "export": ("export", None, 30, False),
    "sample": ("sample", 0, 60, False),
    "evaluate": ("evaluate", 0, 60, False),
    "fid_curve": ("", None, None, False),
    "geneval_env": ("geneval_env", None, 180, False),
    "geneval_metadata": ("", None, None, True),
    "geneval_fetch_models": ("geneval_fetch", None, 60, True),
    "geneval_sample": ("sample", 0, 60, False),
    "geneval_score": ("geneval_score", 0, 240, False),
    "scorer_env": ("scorer_env", None, 120, False),
    "scorer_weights": ("scorer_weights", None, 240, True),
    "score": ("score", 0, 120, False),
}


@dataclass
class Job:
    """One job of the workflow: its rule, wildcards, what it asks the scheduler for, and the jobs it waits for."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]
    gpus: int = 0  # GPUs per node
    nodes: int = 1
    runtime_min: int | None = None  # the requested time limit, when the rule sets one
    hub: bool = False  # holds the one download slot of the profiles (`hub=1`)
    deps: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return job_key(self.rule, dict(self.wildcards))

    @property
    def wc(self) -> dict[str, str]:
        return dict(self.wildcards)


def job_key(rule: str, wildcards: dict[str, str]) -> str:
    """``rule[k=v,...]``: the identity of a job (the rule and its wildcards, as Snakemake prints them)."""
    return rule + ("[" + ",".join(f"{k}={v}" for k, v in wildcards.items()) + "]" if wildcards else "")


def load_config(path: Path) -> dict[str, Any]:
    """A workflow config file, checked against the workflow's schema (errors name the key) and the registry."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}: pass --configfile workflow/config/paper.yaml or smoke.yaml")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if SCHEMA.is_file():
        import jsonschema

        schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise ValueError(f"config {path}: {where}: {error.message} (see {SCHEMA.relative_to(REPO)})")
    _check_models(config)
    check_config(config, read_paper(PAPER_CSV))
    return config


def _check_models(config: dict[str, Any]) -> None:
    from ..teachers.registry import BASELINES, TEACHERS

    zoo = config["source"] == "zoo"
    for name in config["teachers"]:
        if name not in TEACHERS:
            raise ValueError(f"config teachers: unknown teacher {name!r}; see `sidrepro teachers`")
        if TEACHERS[name].zoo != zoo:
            raise ValueError(f"config teachers: {name!r} is {'a zoo' if TEACHERS[name].zoo else 'a hub'} model "
                             f"but source is {config['source']!r}")
    for name in config["baselines"]:
        if name not in BASELINES:
            raise ValueError(f"config baselines: unknown baseline {name!r}; see `sidrepro teachers`")


def model_ids(config: dict[str, Any], table: str | None = None) -> list[str]:
    """Model ids of every measured row (``{teacher}--{setting}``, ``teacher--{t}``, ``baseline--{b}``), as in
    common.smk, optionally of one table only."""
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


def model_kind(model: str) -> tuple[str, ...]:
    """('student', teacher, setting), ('teacher', name) or ('baseline', name)."""
    kind, _, name = model.partition("--")
    return (kind, name) if kind in ("teacher", "baseline") else ("student", kind, name)


def distill_overrides(config: dict[str, Any], teacher: str, setting: str) -> dict[str, Any]:
    """The `--set` values of one distill job: the config's global, per-teacher and per-setting overrides, and the
    resolution of the teacher's table block where it is not the teacher's preset."""
    entry = config["teachers"][teacher]
    values = {**config["distill"].get("set", {}), **entry.get("set", {}),
              **entry.get("set_by_setting", {}).get(setting, {})}
    return {**values, **distill_resolution(config, teacher, values)}


class _Graph:
    """Creates each job once, on demand, with its dependencies first (insertion order is a topological order)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.jobs: dict[str, Job] = {}
        self.data = config["data"]
        self.zoo = config["source"] == "zoo"
        self.geneval = config.get("geneval", {})
        self.scores = config.get("scores", {})
        self.paper = read_paper(PAPER_CSV)

    def res(self, key: str, name: str, default: Any) -> Any:
        return self.cfg["resources"].get(key, {}).get(name, default)

    def add(self, rule: str, deps: list[str], **wildcards: str) -> str:
        key = job_key(rule, wildcards)
        if key not in self.jobs:
            job = Job(rule, tuple(wildcards.items()), deps=list(dict.fromkeys(deps)))
            if rule in RULE_RESOURCES:
                res_key, gpu, runtime, hub = RULE_RESOURCES[rule]
                job.gpus = 0 if gpu is None else int(self.res(res_key, "gpu", gpu))
                job.runtime_min = None if runtime is None else int(self.res(res_key, "runtime", runtime))
                job.hub = hub and not (rule == "scorer_weights" and self.scores.get("weights") == "tiny")
            self.jobs[key] = job
        return key

    # -- teachers and data
    def marker(self, name: str) -> str:
        return self.add("zoo", []) if self.zoo else self.add("fetch", [], name=name)

    def prompts(self) -> list[str]:
        p = self.data["prompts"]
        if "list" in p:
            return [self.add("prompts", [])]
        if "from_shards" in p:
            return [self.add("prompts_from_shards", [*self.shards(), self.coco_reference()])]
        return []

    def shards(self) -> list[str]:
        s = self.data["shards"]
        if "dataset" in s:
            return [self.add("fetch_dataset", [])]
        if "synthetic" in s:
            return [self.add("synthetic_shards", self.prompts())]
        return []

    def coco_reference(self) -> str:
        coco = self.data["coco"]
        if "synthetic" in coco:
            return self.add("coco_reference", [self.add("synthetic_coco", [])])
        return self.add("coco_reference", [self.add("fetch_coco", [])] if coco.get("download", False) else [])

    def clip(self) -> str:
        return self.add("tiny_clip", []) if self.cfg["evaluate"].get("tiny_clip", False) else self.add("fetch_clip", [])

    # -- distillation
    def distill(self, teacher: str, setting: str) -> str:
        if setting == "data-free":
            deps = [self.marker(teacher), *self.prompts()]
        else:
            deps = [self.marker(teacher), *self.shards(), self.distill(teacher, "data-free")]
        deps += [self.coco_reference(), self.clip()]  # the run scores its snapshots as it trains (selection)
        key = self.add("distill", deps, teacher=teacher, setting=setting)
        job = self.jobs[key]
        own = self.cfg["teachers"][teacher].get("resources", {})
        job.gpus = int(own.get("gpu", self.res("distill", "gpu", 0)))
        job.nodes = int(own.get("nodes", self.res("distill", "nodes", 1)))
        return key  # no runtime: a distillation runs to the profile's cap per job and continues in the next

    def model_inputs(self, model: str) -> str:
        kind = model_kind(model)
        if kind[0] == "student":
            return self.add("export", [self.distill(kind[1], kind[2])], teacher=kind[1], setting=kind[2])
        return self.marker(kind[1])

    # -- sampling and evaluation
    def merged(self, model: str) -> str:
        n = self.cfg["sample"]["num_shards"]
        shards = [self.add("sample", [self.coco_reference(), self.model_inputs(model)], model=model, shard=str(k))
                  for k in range(n)]
        return self.add("merge_samples", shards, model=model)

    def evaluate(self, model: str) -> str:
        return self.add("evaluate", [self.merged(model), self.coco_reference(), self.clip()], model=model)

    def geneval_metadata(self) -> list[str]:
        source = self.geneval.get("metadata", "official")
        if source == "official":
            return [self.add("geneval_metadata", [])]
        return [self.add("geneval_smoke_metadata", [])] if source == "smoke" else []

    def geneval_score(self, model: str) -> str:
        env = self.add("geneval_env", [])
        prompts = self.add("geneval_prompts", self.geneval_metadata())
        n = self.geneval.get("num_shards", self.cfg["sample"]["num_shards"])
        shards = [self.add("geneval_sample", [prompts, self.model_inputs(model)], model=model, shard=str(k))
                  for k in range(n)]
        merged = self.add("geneval_merge", shards, model=model)
        tiny = self.geneval.get("models", "official") == "tiny"
        models = self.add("geneval_tiny_models" if tiny else "geneval_fetch_models", [env])
        return self.add("geneval_score", [merged, *self.geneval_metadata(), env, models], model=model)

    def score(self, model: str, scorer: str) -> str:
        env = [self.add("scorer_env", [], scorer=scorer)] if scorer in SCORER_OWN_ENV else []
        weights = self.add("scorer_weights", env if self.scores.get("weights") == "tiny" else [], scorer=scorer)
        return self.add("score", [self.merged(model), weights, *env], model=model, scorer=scorer)

    def table(self, table: str) -> str:
        deps = []
        for m in model_ids(self.cfg, table):
            deps += [self.evaluate(m), self.add("sample_grid", [self.merged(m)], model=m)]
        for m in model_ids(self.cfg, table):
            kind = model_kind(m)
            if kind[0] == "student":
                run = self.distill(kind[1], kind[2])
                deps += [self.add("training_curves", [run], teacher=kind[1], setting=kind[2]),
                         self.add("fid_curve", [run], teacher=kind[1], setting=kind[2])]
        for m in model_ids(self.cfg, table):
            for k in table_score_keys(self.cfg, table, self.paper):
                deps.append(self.geneval_score(m) if k == "geneval" else self.score(m, k))
        return self.add("table", deps, table=table)


def tables(config: dict[str, Any]) -> list[str]:
    """The table ids the config's teachers and baselines fill."""
    entries = [*config["teachers"].values(), *config["baselines"].values()]
    return sorted({e["table"] for e in entries})


def workflow_jobs(config: dict[str, Any]) -> dict[str, Job]:
    """Every job of the default target ``all`` (what ``snakemake -n --forceall`` lists), dependencies first."""
    scorers = config.get("scores", {}).get("scorers", list(ALL_SCORERS))
    for key in config["tables"].get("scores", []):  # the same parse-time checks as common.smk
        if key == "geneval" and not config.get("geneval"):
            raise ValueError("config tables.scores: geneval needs a `geneval:` section "
                             "(see workflow/config/paper.yaml)")
        if key != "geneval" and key not in scorers:
            raise ValueError(f"config tables.scores: {key!r} is not among scores.scorers ({', '.join(scorers)})")
    if config["data"]["prompts"].get("from_shards") and "synthetic" in config["data"]["shards"]:
        raise ValueError("config data.prompts.from_shards needs real shards (data.shards.dataset or .dir), "
                         "not synthetic")
    graph = _Graph(config)
    graph.add("all", [graph.table(t) for t in tables(config)])
    return graph.jobs

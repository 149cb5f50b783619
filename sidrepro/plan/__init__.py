"""The cost plan of a workflow config: per job type the job count, GPUs, GPU-hours and peak GPU memory, the disk each
stage writes, and the critical path and wall time on N nodes (``sidrepro plan``).

Where each number comes from (every figure carries its basis and source):
- jobs: ``workflow.py`` derives them from the config as the rule files do (the same jobs as ``snakemake -n
  --forceall``);
- GPU time: ``bench.py`` (measured iterations in ``bench/results/``, extrapolated where a teacher or GPU was not
  measured) and ``cost.py`` (iterations, micro-batches and sampled images of each job);
- memory: ``sidrepro/distill/memory.py``'s model of a training rank; disk: ``disk.py``;
- critical path and wall time: ``schedule.py`` (the scheduling model is stated there).
Nothing here imports Snakemake; torch is imported only to count parameters and resolve run configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .bench import BENCH_DIR, Bench, Figure
from .cost import DistillRun, Sampling, distill_runs, job_hours, samplings
from .disk import Stage, stages
from .schedule import Task, check_fits, critical_path, wall_time
from .workflow import Job, load_config, workflow_jobs

GPU_MEMORY_GB = {"h100": 80.0, "h200": 141.0}
# The order of the pipeline, for the plan's rows.
RULE_ORDER = ("zoo", "fetch", "fetch_dataset", "fetch_coco", "fetch_clip", "prompts", "prompts_from_shards",
              "synthetic_coco", "synthetic_shards", "coco_reference", "tiny_clip", "distill", "export",
              "training_curves", "fid_curve", "sample", "merge_samples", "evaluate", "sample_grid", "geneval_env",
              "geneval_metadata", "geneval_smoke_metadata", "geneval_prompts", "geneval_fetch_models",
              "geneval_tiny_models", "geneval_sample", "geneval_merge", "geneval_score", "scorer_env",
              "scorer_weights", "score", "table", "all")
# Weakest last: a combination of figures takes the weakest basis among them.
BASIS_ORDER = ("measured", "derived", "registry", "estimate", "assumed", "upper bound", "not measured")


def weakest(bases: list[str]) -> str:
    """The weakest basis among ``bases`` (``BASIS_ORDER``); "-" when none is a basis (jobs of seconds)."""
    known = [b for b in bases if b in BASIS_ORDER]
    return max(known, key=BASIS_ORDER.index) if known else "-"


@dataclass
class JobType:
    """One row of the plan: a distill run (teacher x setting) or all jobs of another rule."""

    name: str
    jobs: int
    gpus: int  # GPUs per job (all nodes)
    hours: float  # the longest job's wall hours
    gpu_hours: float
    basis: str
    memory_gb: float | None = None
    source: str = ""


@dataclass
class Plan:
    config: Path
    gpu: str
    device: str
    nodes: int
    gpus_per_node: int
    jobs: dict[str, Job]
    tasks: list[Task]
    hours: dict[str, Figure]
    types: list[JobType]
    runs: dict[tuple, DistillRun]
    sampling: dict[str, Sampling]
    stages: list[Stage]
    gpu_ratio: Figure | None
    critical_hours: float
    critical_chain: list[str]
    wall_hours: float
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(t.gpu_hours for t in self.types)


def make_plan(configfile: Path, *, nodes: int | None = None, gpus_per_node: int = 8, gpu: str = "h100",
              bench_dir: Path = BENCH_DIR) -> Plan:
    """The plan of ``configfile`` on ``nodes`` nodes (default: the most any job needs) of ``gpus_per_node`` GPUs,
    with GPU figures for ``gpu`` (a GPU of ``bench_dir``'s results). Bad values raise ``ValueError`` naming them."""
    if nodes is not None and nodes < 1:
        raise ValueError(f"--nodes must be at least 1, got {nodes}")
    if gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node must be at least 1, got {gpus_per_node}")
    bench = Bench(bench_dir)
    bench.check_gpu(gpu)
    config = load_config(configfile)
    jobs = workflow_jobs(config)
    runs = distill_runs(config, jobs, bench, gpu)
    gpu_sampling = any(j.gpus for j in jobs.values() if j.rule in ("sample", "geneval_sample"))
    sampling = samplings(config, runs, bench, gpu, gpu_sampling)
    hours = {k: job_hours(config, j, runs, sampling) for k, j in jobs.items()}
    tasks = [Task(k, hours[k].value, j.gpus, j.nodes, j.rule == "distill", j.hub, tuple(j.deps))
             for k, j in jobs.items()]
    nodes = nodes or max((j.nodes for j in jobs.values() if j.gpus), default=1)
    check_fits(tasks, nodes, gpus_per_node)
    crit, chain = critical_path(tasks)
    others = [g for g in bench.gpus if g != gpu]
    return Plan(Path(configfile), gpu, bench.device[gpu], nodes, gpus_per_node, jobs, tasks, hours,
                _types(jobs, hours, runs, gpu), runs, sampling, stages(config, runs, sampling),
                bench.gpu_ratio(gpu, others[0], "amp") if others else None, crit, chain,
                wall_time(tasks, nodes, gpus_per_node))


def _types(jobs: dict[str, Job], hours: dict[str, Figure], runs: dict[tuple, DistillRun], gpu: str) -> list[JobType]:
    groups: dict[str, list[str]] = {}
    order = {r: i for i, r in enumerate(RULE_ORDER)}
    for k, j in sorted(jobs.items(), key=lambda kv: order.get(kv[1].rule, len(order))):
        name = f"distill {j.wc['teacher']} {j.wc['setting']}" if j.rule == "distill" else j.rule
        groups.setdefault(name, []).append(k)
    out = []
    for name, keys in groups.items():
        first = jobs[keys[0]]
        gpus = first.gpus * first.nodes
        figs = [hours[k] for k in keys]
        gpu_hours = sum(f.value * jobs[k].gpus * jobs[k].nodes for k, f in zip(keys, figs, strict=True))
        basis = weakest([f.basis for f in figs])
        mem = None
        if first.rule == "distill":
            est = runs[(first.wc["teacher"], first.wc["setting"])].memory
            mem = est.total_gb if est else None
        out.append(JobType(name, len(keys), gpus, max(f.value for f in figs), gpu_hours, basis, mem,
                           figs[0].source))
    return out

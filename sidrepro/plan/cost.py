"""GPU time, peak GPU memory and duration of every job of a workflow config.

- distill: iterations = ceil(duration_kimg x 1000 / batch) of the run's resolved config (``resolve_config`` with the
  workflow's `--set` values); each rank runs ``rounds`` micro-batches per iteration (``RunConfig.per_rank`` over the
  job's GPUs), each as long as a benchmark iteration over that micro-batch (``Bench.micro_batch_ms``). Wall time =
  iterations x rounds x micro-batch time; GPU-hours = wall time x GPUs. The benchmarks ran on one GPU: FSDP's
  all-gathers and reduce-scatters across GPUs and nodes, checkpoint writes, start-up and the data-aided shard
  encoding are not in them. Peak memory per GPU: ``sidrepro/distill/memory.py``'s ``estimate`` for the job's GPUs.
  Snapshot selection adds its scoring (``scoring_hours``): each scored snapshot's images, shared by the job's
  GPUs, at the student's sampling time per image.
- sample, geneval_sample: images x transformer passes per image (``SampledModel``) x the bf16 forward time
  (``Bench.forward_ms``); text encoding, VAE decoding, PNG writing and model loading are not measured (left out).
- fetch, fetch_dataset, fetch_coco: download size / ``BANDWIDTH_MB_S`` (assumed).
- every other job that sets a runtime: that runtime, an upper bound; CPU jobs without one take seconds (counted as
  0); a job with neither a benchmark nor a runtime (a tiny-zoo distillation on CPUs) is marked not measured.
Jobs that ask for no GPU cost no GPU-hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..distill.memory import MemoryEstimate, estimate
from ..evaluate.geneval import NUM_PROMPTS
from ..evaluate.reference import SUBSETS
from ..table_rows import row_resolution, table_score_keys
from ..tables import read_paper
from ..teachers.architectures import ARCHITECTURES
from .bench import Bench, Figure
from .models import ARCH_OF, SampledModel, repos_of, sampled_model
from .workflow import PAPER_CSV, Job, distill_overrides, model_ids, tables

BANDWIDTH_MB_S = 100.0  # assumed download speed from the hub (MB/s)
DATASET_SHARDS = 124  # midjourney-v6-llava: data/train_000..123.parquet (sidrepro/data/dataset.py)
COCO_VAL_GB = 6.6  # val2014.zip, the images (the archive is deleted after unzipping): assumed from its size
DATASET_GB_PER_IMAGE = 1e-3  # assumed parquet bytes per image (about 1 MB): the fetch checks the hub's real sizes
SMOKE_GENEVAL_PROMPTS = 6  # workflow/scripts/geneval_smoke_metadata.py: one prompt per task


@dataclass
class DistillRun:
    """One distill job as the trainer runs it."""

    teacher: str
    setting: str
    world: int
    iterations: int
    batch: int
    micro: int
    rounds: int
    cfg: Any  # the resolved RunConfig
    micro_ms: Figure | None  # None: a tiny zoo teacher or a CPU job (no GPU figure)
    memory: MemoryEstimate | None

    @property
    def hours(self) -> Figure | None:
        if self.micro_ms is None:
            return None
        h = self.iterations * self.rounds * self.micro_ms.value / 3.6e6
        return Figure(h, self.micro_ms.basis, f"{self.iterations} iterations x {self.rounds} micro-batches x "
                                              f"{self.micro_ms.value:.0f} ms", self.micro_ms.gpu)


@dataclass
class Sampling:
    """One measured model's sampling: how it samples and what one image costs on the planned GPU."""

    spec: SampledModel
    forward_ms: Figure | None
    coco_images: int
    geneval_images: int

    @property
    def sec_per_image(self) -> Figure | None:
        if self.forward_ms is None:
            return None
        f = self.forward_ms
        return Figure(self.spec.forwards * f.value / 1e3, f.basis, f"{self.spec.forwards} passes x "
                                                                   f"{f.value:.2f} ms", f.gpu)


def subset_images(config: dict[str, Any], subset: str) -> int:
    """Images of a reference subset: its size, or fewer on a small synthetic COCO (``min(size, available)``)."""
    size = SUBSETS[subset].size
    n = config["data"]["coco"].get("synthetic")
    return size if n is None else min(size, n)


def geneval_images(config: dict[str, Any]) -> int:
    """GenEval images per model: prompts x images per prompt (0 without a geneval section)."""
    g = config.get("geneval")
    if not g:
        return 0
    prompts = {"official": NUM_PROMPTS, "smoke": SMOKE_GENEVAL_PROMPTS}.get(g.get("metadata", "official"))
    if prompts is None:  # a metadata file of one's own: one prompt per non-empty line
        path = Path(g["metadata"])
        prompts = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
    return prompts * g.get("images_per_prompt", 4)


def distill_runs(config: dict[str, Any], jobs: dict[str, Job], bench: Bench, gpu: str) -> dict[tuple, DistillRun]:
    """Every distill job's run: resolved config, iterations, micro-batches and (on GPUs) time and memory."""
    from ..distill.config import resolve_config

    runs = {}
    for job in jobs.values():
        if job.rule != "distill":
            continue
        t, s = job.wc["teacher"], job.wc["setting"]
        cfg, _ = resolve_config(t, {**distill_overrides(config, t, s), "setting": s})
        world = max(1, job.gpus) * job.nodes
        try:
            b_rank, rounds = cfg.per_rank(world)
        except ValueError as err:
            raise ValueError(f"distill {t} {s} on {world} GPUs: {err}; set teachers.{t}.resources (gpu, nodes) "
                             f"or distill.set batch") from None
        micro = b_rank // rounds
        iterations = math.ceil(cfg.duration_kimg * 1000 / cfg.batch)
        arch = ARCH_OF.get(t)
        micro_ms = memory = None
        if arch is not None and job.gpus > 0:
            micro_ms = bench.micro_batch_ms(arch, cfg.precision, gpu, cfg.resolution, micro)
            memory = estimate(arch, precision=cfg.precision, gpus=world, batch_gpu=micro, resolution=cfg.resolution,
                              grad_checkpointing=cfg.grad_checkpointing, text_encoders_on_gpu=not cfg.park_encoders)
        runs[(t, s)] = DistillRun(t, s, world, iterations, cfg.batch, micro, rounds, cfg, micro_ms, memory)
    return runs


def samplings(config: dict[str, Any], runs: dict[tuple, DistillRun], bench: Bench, gpu: str,
              uses_gpu: bool) -> dict[str, Sampling]:
    """Every measured model's sampling cost (per-image figures only where sampling runs on GPUs)."""
    steps = {k: (r.cfg.num_steps, r.cfg.resolution) for k, r in runs.items()}
    coco = subset_images(config, config["sample"]["subset"])
    paper = read_paper(PAPER_CSV)
    with_geneval = {m for t in tables(config) if "geneval" in table_score_keys(config, t, paper)
                    for m in model_ids(config, t)}  # GenEval runs only for the tables that print it
    out = {}
    for m in model_ids(config):
        spec = sampled_model(m, steps)
        if m.partition("--")[0] in ("teacher", "baseline"):  # at the block's resolution; students where distilled
            spec = replace(spec, resolution=row_resolution(config, m))
        fwd = bench.forward_ms(spec.arch, gpu, spec.resolution, spec.text_tokens) if spec.arch and uses_gpu else None
        out[m] = Sampling(spec, fwd, coco, geneval_images(config) if m in with_geneval else 0)
    return out


def _upper(job: Job) -> Figure:
    """A job without a benchmark: its requested runtime (an upper bound), else seconds for a job without GPUs
    (merges, grids, tables), else unknown (counted as 0, marked)."""
    if job.runtime_min is not None:
        return Figure(job.runtime_min / 60, "upper bound", f"requested runtime {job.runtime_min} min")
    if job.gpus or job.rule == "distill":
        return Figure(0.0, "not measured", "no benchmark for this model or device, no runtime set: counted as 0")
    return Figure(0.0, "-", "seconds (the rule sets no runtime)")


def _shard_share(total: int, shard: int, shards: int) -> int:
    return len(range(shard, total, shards))  # prompt ids shard, shard + shards, ... (sidrepro sample --shard)


def scoring_hours(config: dict[str, Any], run: DistillRun, student: Sampling | None) -> Figure | None:
    """Wall hours a distillation spends scoring its generator snapshots (snapshot selection, inside the job): every
    ``snapshot_ticks`` ticks and at the end, the selection subset's images shared by the job's GPUs x the student's
    sampling time per image; FID and CLIP features are not measured (left out)."""
    from ..selection import SELECTION_SUBSETS

    if student is None or student.sec_per_image is None or not run.cfg.snapshot_ticks:
        return None
    select = config["evaluate"].get("select", {})
    images = select.get("count") or subset_images(config, SELECTION_SUBSETS[config["evaluate"]["protocol"]])
    ticks = run.cfg.duration_kimg / run.cfg.tick_kimg
    snapshots = math.floor(ticks / run.cfg.snapshot_ticks) + (0 if ticks % run.cfg.snapshot_ticks == 0 else 1)
    per = student.sec_per_image
    hours = snapshots * math.ceil(images / run.world) * per.value / 3600
    return Figure(hours, "estimate", f"{snapshots} scored snapshots x {images} images / {run.world} GPUs x "
                                     f"{per.value:.3f} s", per.gpu)


def job_hours(config: dict[str, Any], job: Job, runs: dict[tuple, DistillRun], sampling: dict[str, Sampling]) -> Figure:
    """Wall hours of one job (see the module docstring for the model of each rule)."""
    wc = job.wc
    if job.rule == "distill":
        run = runs[(wc["teacher"], wc["setting"])]
        if run.hours is None:
            return _upper(job)
        scoring = scoring_hours(config, run, sampling.get(f"{wc['teacher']}--{wc['setting']}"))
        if scoring is None:
            return run.hours
        return Figure(run.hours.value + scoring.value, "estimate", f"{run.hours.source} + {scoring.source}",
                      run.hours.gpu)
    if job.rule in ("sample", "geneval_sample") and job.gpus > 0:
        s = sampling[wc["model"]]
        per = s.sec_per_image
        if per is None:
            return _upper(job)
        shards = config["sample"]["num_shards"] if job.rule == "sample" else \
            config["geneval"].get("num_shards", config["sample"]["num_shards"])
        total = s.coco_images if job.rule == "sample" else s.geneval_images
        n = _shard_share(total, int(wc["shard"]), shards)
        return Figure(n * per.value / 3600, per.basis, f"{n} images x {per.value:.3f} s", per.gpu)
    if job.rule == "fetch":
        gb = sum(repos_of(wc["name"]).values())
        return Figure(gb * 1e3 / BANDWIDTH_MB_S / 3600, "assumed", f"{gb:.0f} GB at {BANDWIDTH_MB_S:.0f} MB/s")
    if job.rule == "fetch_coco":
        return Figure(COCO_VAL_GB * 1e3 / BANDWIDTH_MB_S / 3600, "assumed",
                      f"{COCO_VAL_GB:g} GB at {BANDWIDTH_MB_S:.0f} MB/s")
    if job.rule == "fetch_dataset":
        gb = dataset_gb()
        return Figure(gb * 1e3 / BANDWIDTH_MB_S / 3600, "assumed", f"{gb:.0f} GB at {BANDWIDTH_MB_S:.0f} MB/s")
    return _upper(job)


def dataset_images() -> int:
    """Images of the paper's image-text dataset: its shards x the official rows per shard (``images_per_shard``)."""
    from ..distill.config import RunConfig

    return DATASET_SHARDS * RunConfig.images_per_shard


def dataset_gb() -> float:
    """The image-text dataset's assumed size (GB)."""
    return dataset_images() * DATASET_GB_PER_IMAGE


def latent_bytes(arch: str, resolution: int) -> int:
    """fp32 latent of one image at ``resolution`` (the shard caches' ``latent_dtype``)."""
    a = ARCHITECTURES[arch]
    c, h, w = a.latent
    native = (32 if a.transformer_class.startswith("Sana") else 8) * h
    return 4 * c * (h * resolution // native) * (w * resolution // native)

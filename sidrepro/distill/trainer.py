"""The SiD-DiT trainer: devices, precision, sharding, accumulation, logging, checkpoints and resume around the
two phases of :class:`sidrepro.sid.SiD` (the same object the Gaussian-mixture toy trains with).

A linear loop. Per iteration: one ``K`` shared by every rank and both phases; the fake-score phase over the
per-rank share of the batch in micro-batches, one Adam step; the generator phase on fresh prompts and noise, one
Adam step (skipped while the data-aided schedule freezes the generator). Every random draw comes from a generator
seeded by ``(seed, what, nimg, rank)``, so a resumed run replays exactly the draws an uninterrupted one makes.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_json_atomic
from ..revision import code_revision
from ..sid.adversarial import AdversarialSchedule
from ..sid.method import SiD, SiDConfig
from ..stopping import Stopper
from ..teachers.base import Conditioning, TeacherAdapter
from .checkpoint import find_latest, load_checkpoint, save_checkpoint
from .config import RunConfig, config_changes
from .sharded_load import load_checkpoint_model, load_network
from .snapshots import Evaluator, is_scored, take_snapshot


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts, identical on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _generator(device: torch.device, *parts: object) -> torch.Generator:
    return torch.Generator(device).manual_seed(derive_seed(*parts))


# --- distributed ----------------------------------------------------------------------------------------------
ALLOC_CONF = "expandable_segments:True"


def set_allocator_defaults() -> None:
    """Expandable segments for PyTorch's CUDA caching allocator unless ``PYTORCH_CUDA_ALLOC_CONF`` says otherwise;
    call before the first CUDA allocation. The two phases allocate blocks of different sizes; with fixed segments
    the allocator kept requesting new segments from the driver in steady state (SANA-1.6B on an H100: ~2 per
    iteration, 1.1 GB more peak memory, and a loop-to-floor time ratio of 1.10 and 1.28 against 0.93-1.14, median
    0.99, over five runs with expandable segments: bench/results/sid_iteration_h100.jsonl)."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts a process group when launched by torchrun/accelerate with >1 ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # TF32 and the bf16/fp16 reduced-precision reductions of matmuls off, as the official loops do (process-wide
    # flags; they matter on CUDA only). Guarded: not every torch build has every flag.
    for backend, flag in ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
                          (torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
                          (torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction")):
        if hasattr(backend, flag):
            setattr(backend, flag, False)
    if world > 1 and not torch.distributed.is_initialized():
        # A collective may wait for a checkpoint of hundreds of GB on a slow filesystem: an hour by default, set by
        # the launcher (sidrepro/commands/launch.py), instead of torch's ten minutes that would kill a healthy job.
        timeout = datetime.timedelta(seconds=float(os.environ.get("SIDREPRO_PG_TIMEOUT_S", "3600")))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return rank, world, device


def shard(net: nn.Module) -> nn.Module:
    """FSDP2 over the transformer blocks, then the root: one all-gather per block, parameters sharded at rest."""
    from torch.distributed.fsdp import fully_shard

    for attr in ("transformer_blocks", "single_transformer_blocks"):
        for block in getattr(net, attr, []):
            fully_shard(block)
    fully_shard(net)
    return net


# --- precision ------------------------------------------------------------------------------------------------
def weight_dtype(cfg: RunConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def autocast(cfg: RunConfig, device: torch.device):
    """bf16 autocast for AMP (fp32 weights); nothing otherwise (spec §8.2)."""
    if cfg.precision == "amp":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sanitize_(params, clip: float) -> float:
    """Replace non-finite gradient entries (and value-clip when ``clip`` > 0); returns the gradient norm seen
    before, for the log. One fused norm over all gradients; the per-tensor replacement runs only when that norm is
    not finite, which is exactly when some entry is not (or the squares overflow, where replacing changes nothing)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # every rank: the global norm
    if not math.isfinite(norm):
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
    if clip > 0:
        torch._foreach_clamp_min_(grads, -clip)
        torch._foreach_clamp_max_(grads, clip)
    return norm


# --- conditioning sources -------------------------------------------------------------------------------------
class PromptBatches:
    """Per-rank micro-batches of encoded prompts (data-free) or of cached latents + conditioning (data-aided)."""

    def __init__(self, cfg: RunConfig, adapter: TeacherAdapter, rank: int, world: int, device: torch.device):
        from .prompts import PromptSampler, load_prompts

        self.cfg, self.adapter, self.rank, self.world, self.device = cfg, adapter, rank, world, device
        self.b_rank, self.rounds = cfg.per_rank(world)
        self.micro = self.b_rank // self.rounds
        self.shards = None
        if cfg.setting == "data-aided":
            from .data import ShardCache

            if not cfg.shards:
                raise ValueError("config key 'shards': the data-aided setting needs image-text parquet shards")
            barrier = torch.distributed.barrier if world > 1 else None
            self.shards = ShardCache.from_adapter(
                Path(cfg.shards), Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.shards) / "sidrepro-cache",
                adapter, resolution=cfg.resolution or None, seed=cfg.seed, rank=rank, world=world,
                images_per_shard=cfg.images_per_shard, caption_column=cfg.caption_column,
                image_column=cfg.image_column, barrier=barrier)
        prompts = load_prompts(Path(cfg.prompts), forbidden=Path(cfg.forbidden_captions)
                               if cfg.forbidden_captions else None) if cfg.prompts else None
        if prompts is None and self.shards is None:
            raise ValueError("config key 'prompts': the data-free setting needs a prompt file (one prompt per line)")
        self.sampler = PromptSampler(prompts, seed=cfg.seed, rank=rank, world=world) if prompts else None
        if self.shards is None and cfg.precompute_text:
            self.shards = _prompt_cache(cfg, adapter, prompts, rank, world)

    def grid_prompts(self, n: int) -> list[str]:
        """A fixed set of prompts for the sample grids: the first ``n`` of the prompt file or shard captions."""
        if self.sampler is not None:
            return list(self.sampler.prompts[:n])
        return list(self.shards.captions(n))

    def __call__(self, nimg: int, phase: str) -> Iterator[tuple[Conditioning, torch.Tensor | None]]:
        """Yields ``(conditioning, real latents or None)`` per micro-batch for the batch starting at ``nimg``.
        The two phases draw different prompts (the official loop encodes a fresh batch per phase); data-aided, both
        take their captions from the image-text shards (spec §6.3)."""
        p = 0 if phase == "fake" else 1  # disjoint stretches of the stream for the two phases
        if self.shards is not None:
            latents, cond, _ = self.shards.batch(nimg, self.cfg.batch, phase=p, phases=2)
            for r in range(self.rounds):
                sl = slice(r * self.micro, (r + 1) * self.micro)
                real = None if latents is None else latents[sl].to(self.device, self.adapter.dtype)
                yield cond[sl].to(self.device, self.adapter.dtype), real
            return
        prompts = self.sampler.batch(nimg, self.cfg.batch, phase=p, phases=2)
        for r in range(self.rounds):
            yield self.adapter.encode_prompts(prompts[r * self.micro:(r + 1) * self.micro]), None


def _prompt_cache(cfg: RunConfig, adapter: TeacherAdapter, prompts: list[str], rank: int, world: int):
    """The prompt file as caption-only parquet shards, encoded once into a text cache (spec §6.4's precomputed
    path, applied to data-free runs). Rank 0 writes the shards; the cache itself is built like the data-aided one."""
    import pandas as pd

    from ..atomic import write_atomic
    from .data import ShardCache

    folder = Path(cfg.cache_dir or Path(cfg.prompts).with_suffix("")) / "prompt-shards"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        per = cfg.images_per_shard
        for i in range(0, len(prompts), per):
            path = folder / f"train_{i // per:03d}.parquet"
            if not path.exists():
                frame = pd.DataFrame({cfg.caption_column: prompts[i:i + per]})
                write_atomic(path, lambda h, f=frame: f.to_parquet(h, index=False))
    if world > 1:
        torch.distributed.barrier()
    return ShardCache.from_adapter(folder, folder / "sidrepro-cache", adapter, with_images=False, seed=cfg.seed,
                                   rank=rank, world=world, images_per_shard=cfg.images_per_shard,
                                   caption_column=cfg.caption_column,
                                   barrier=torch.distributed.barrier if world > 1 else None)


# --- the loop -------------------------------------------------------------------------------------------------
def _init_generator_from(run_dir: Path, gen: nn.Module, world: int) -> int:
    """Load the latest generator of another (data-free) run into ``gen`` (each rank its shard); returns its image
    count. Every rank calls it."""
    ckpt = _on_rank0(lambda: find_latest(run_dir), world)  # one decision for every rank
    if ckpt is None:
        raise FileNotFoundError(f"config key 'init_from': no complete checkpoint under {run_dir}; run the data-free "
                                f"distillation first or clear init_from to start from the teacher")
    load_checkpoint_model(ckpt, "generator", gen, distributed=world > 1)
    return int(json.loads((ckpt / "state.json").read_text())["nimg"])


def train(cfg: RunConfig, out: Path, adapter: TeacherAdapter, *, progress: bool = True,
          stop_after_kimg: float | None = None, sources: dict[str, str] | None = None,
          on_config_change: str = "error", final_checkpoint: bool = True,
          on_iteration: Callable[[dict], None] | None = None, evaluate: Evaluator | None = None) -> Path | None:
    """Distil ``adapter``'s teacher with ``cfg`` into ``out`` (resuming from ``out``'s latest checkpoint), and return
    the final checkpoint folder. The invocation also stops early, with a checkpoint, ahead of its job's time limit,
    on SIGTERM/SIGUSR1 or a ``STOP`` file (``sidrepro.stopping.Stopper``), and after ``stop_after_kimg``;
    ``out/status.json`` says which (state ``stopped`` or ``finished``), and the run continues when called again.
    ``final_checkpoint=False`` (benchmarks: a real-size checkpoint is tens of GB) skips the checkpoint that closes
    the run and returns the last periodic one, if any. ``on_iteration(row)`` is called after every iteration with
    its log row (benchmarks count work per iteration). ``evaluate`` scores each generator snapshot as the run
    trains (``distill.snapshots``: the best ones are kept, the rest pruned, for ``sidrepro export --select``).

    A checkpoint saved with other values of the keys that define the run (see ``config_changes``) is never resumed:
    ``on_config_change="error"`` refuses with the differences, ``"restart"`` moves the run folder's contents into
    ``superseded/`` and starts afresh (what the workflow does when a hyper-parameter changed)."""
    from .runlog import RunLog

    if on_config_change not in ("error", "restart"):
        raise ValueError(f"on_config_change must be 'error' or 'restart', got {on_config_change!r}")
    rank, world, device = init_distributed()
    out.mkdir(parents=True, exist_ok=True)
    problem = _on_rank0(lambda: _settle_changed_config(out, cfg, on_config_change), world)
    if problem:
        raise ValueError(problem)
    b_rank, rounds = cfg.per_rank(world)
    dtype = weight_dtype(cfg)
    if cfg.park_encoders:  # the encoders wait on the CPU while the networks load; they come in only to encode
        adapter.park_encoders()
    # Under FSDP each rank builds, allocates and reads only its shard of each network (sharded_load.py). Gradient
    # checkpointing covers the teacher too: the generator loss backpropagates through it to x_g, and recomputing
    # its blocks is cheaper than holding a 2B-batch CFG pass's activations (the official code: fake and G only).
    build = partial(load_network, adapter, dtype, device, shard=shard if world > 1 else None,
                    grad_checkpointing=cfg.grad_checkpointing)
    teacher = build().eval().requires_grad_(False)
    fake = build().train()
    gen = build(weights=not cfg.init_from).train()
    init_nimg = _init_generator_from(Path(cfg.init_from), gen, world) if cfg.init_from else 0
    # Fused: one kernel per step instead of several per tensor, the same update. On CPU only in one process: the
    # gloo FSDP path keeps the for-each update it was verified with.
    fused = device.type == "cuda" or world == 1
    opt_f = torch.optim.Adam(fake.parameters(), lr=cfg.lr, betas=(0.0, 0.999), eps=cfg.adam_eps, fused=fused)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.glr, betas=(0.0, 0.999), eps=cfg.adam_eps, fused=fused)
    models, optims = {"generator": gen, "fake": fake}, {"generator": opt_g, "fake": opt_f}

    aided = cfg.setting == "data-aided"
    schedule = AdversarialSchedule(int(cfg.freeze_kimg * 1000), int(cfg.mix_kimg * 1000)) if aided else None
    method = SiD(SiDConfig(num_steps=cfg.num_steps, init_timestep=cfg.init_timestep, noise=cfg.noise,
                           alpha=cfg.alpha, weighting=cfg.weighting, cfg_train_fake=cfg.cfg_train_fake,
                           cfg_eval_fake=cfg.cfg_eval_fake, cfg_eval_real=cfg.cfg_eval_real, ls=cfg.ls,
                           lsg=cfg.lsg, lsd=cfg.lsd, lsg_gan=cfg.lsg_gan), schedule)
    batches = PromptBatches(cfg, adapter, rank, world, device)
    if cfg.park_encoders:
        adapter.park_encoders()
    shape = adapter.latent_shape(cfg.resolution)

    nimg, bad_iters, state = 0, 0, {}
    latest = _on_rank0(lambda: find_latest(out), world)  # one decision for every rank
    if latest is not None:
        state = load_checkpoint(latest, models=models, optimizers=optims, sharded=world > 1)
        nimg, bad_iters = int(state["nimg"]), int(state.get("bad_iters", 0))
    total = int(cfg.duration_kimg * 1000)
    stop_at = total if stop_after_kimg is None else min(total, int(stop_after_kimg * 1000))
    tick = max(1, int(cfg.tick_kimg * 1000))
    log = RunLog(out, rank=rank, cfg=cfg, adapter=adapter, progress=progress, total=total, start=nimg,
                 grid_prompts=batches.grid_prompts(8))
    if rank == 0:  # the resolved config (and where each value came from) next to the outputs
        write_json_atomic(out / "config.json", {"config": asdict(cfg), "sources": sources or {}, "world_size": world,
                                                "code": code_revision(),
                                                "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")})
    stopper = Stopper(out, checkpoint_bytes=_checkpoint_bytes(models), query_scheduler=rank == 0,
                      measured_checkpoint_s=_on_rank0(lambda: log.previous_checkpoint_seconds(), world),
                      measured_evaluation_s=_on_rank0(lambda: log.previous_evaluation_seconds(), world))
    if rank == 0:
        stopper.check_time_left()
    # Hundreds of thousands of long-lived objects (modules, parameters, encoders) would be rescanned by every full
    # garbage collection, a pause of ~0.5 s that lands in some iteration; frozen, they are never scanned again.
    gc.collect()
    gc.freeze()

    def _state() -> dict:
        return {"nimg": nimg, "bad_iters": bad_iters, "init_nimg": init_nimg, "config": asdict(cfg),
                "code": code_revision()}

    def checkpoint() -> Path:
        log.checkpoint_starts()
        t0 = time.perf_counter()
        path = save_checkpoint(out, nimg, models=models, optimizers=optims, state=_state(), keep=cfg.keep_checkpoints,
                               sharded=world > 1)
        stopper.observe_checkpoint(time.perf_counter() - t0)
        log.status("running", nimg, checkpoint=path, checkpoint_seconds=stopper.checkpoint_s,
                   deadline=stopper.deadline(), job_end=stopper.job_end())
        return path

    def score_snapshot() -> None:
        t_eval = time.perf_counter()
        with autocast(cfg, device):
            take_snapshot(out, nimg, gen, _state(), evaluate, adapter=adapter, num_steps=cfg.num_steps,
                          init_timestep=cfg.init_timestep, noise=cfg.noise, resolution=cfg.resolution, rank=rank,
                          world=world)
        stopper.observe_evaluation(time.perf_counter() - t_eval)
        log.evaluation_done(stopper.evaluation_s)

    def snapshot_due() -> bool:  # at a tick boundary that is a snapshot tick, or at the run's end
        return bool(cfg.snapshot_ticks) and (nimg >= total or (
            (nimg % tick) < cfg.batch and (nimg // tick) % cfg.snapshot_ticks == 0))

    last_ckpt = latest
    log.status("running", nimg, checkpoint=latest, checkpoint_seconds=stopper.checkpoint_s,
               deadline=stopper.deadline(), job_end=stopper.job_end())
    # An earlier invocation stopped at a snapshot it had no time left to score: the generator is that snapshot now.
    if evaluate is not None and nimg and snapshot_due() and _on_rank0(lambda: not is_scored(out, nimg), world):
        score_snapshot()
    reason, deferred = "", False
    while nimg < stop_at:
        reason = stopper.reason()
        if _any_rank(bool(reason), world, device):  # a stop seen by one rank stops all, at the same iteration
            reason = reason or "another rank's stop"
            break
        t0 = time.perf_counter()
        steps = method.sample_steps(_generator(torch.device("cpu"), cfg.seed, "K", nimg))
        g = _generator(device, cfg.seed, "noise", nimg, rank)
        stats: dict[str, float] = {}

        # Fake-score phase: the fake network (and, data-aided, the discriminator it carries) learns.
        fake.requires_grad_(True)
        gen.requires_grad_(False)
        for r, (cond, real) in enumerate(batches(nimg, "fake")):
            _sync_grads(fake, world, last=r == rounds - 1)
            z, eps, t = _draws(method, g, len(cond), shape)
            uncond = adapter.empty(len(cond))
            with autocast(cfg, device):
                out_f = method.fake_phase(adapter.bind(gen, cond).velocity, adapter.bind(fake, cond, uncond), z, eps,
                                          t, steps, noise_generator=g, real_x0=real,
                                          fake_on_real=adapter.bind(fake, cond, uncond) if aided else None)
            (out_f.loss / b_rank).backward()
            log.accumulate(out_f.stats)
        # Always step, as the official loops do: non-finite samples were dropped from the loss, and sanitize_
        # replaced whatever non-finite gradient entries remained.
        stats["grad_norm_fake"] = sanitize_(fake.parameters(), cfg.grad_clip)
        opt_f.step()
        opt_f.zero_grad(set_to_none=True)

        # Generator phase: fresh prompts and noise; gradients reach x_g through the teacher and the fake network.
        gen_steps = method.generator_steps(nimg)
        if gen_steps:
            fake.requires_grad_(False)
            gen.requires_grad_(True)
            for r, (cond, _) in enumerate(batches(nimg, "generator")):
                _sync_grads(gen, world, last=r == rounds - 1)
                z, eps, t = _draws(method, g, len(cond), shape)
                uncond = adapter.empty(len(cond))
                with autocast(cfg, device):
                    out_g = method.generator_phase(adapter.bind(gen, cond).velocity,
                                                   adapter.bind(teacher, cond, uncond),
                                                   adapter.bind(fake, cond, uncond), z, eps, t, steps, nimg=nimg,
                                                   noise_generator=g)
                (out_g.loss / b_rank).backward()
                log.accumulate(out_g.stats)
            stats["grad_norm_gen"] = sanitize_(gen.parameters(), cfg.grad_clip)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)

        # This iteration's repairs, over every rank: samples dropped as non-finite per phase, micro-batches whose
        # loss over the kept samples was not finite, and whether sanitize_ replaced gradient entries (0 or 1; the
        # gradient norm is global). Bad: a non-finite loss, or a phase that dropped the whole global batch.
        keys = ("dropped_fake", "dropped_gen", "nonfinite_loss")
        counts = torch.tensor([log.iteration_sum(k) for k in keys], dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(counts)
        stats.update(zip(keys, counts.tolist(), strict=True))
        stats["sanitized_fake"] = float(not math.isfinite(stats["grad_norm_fake"]))
        stats["sanitized_gen"] = float(gen_steps and not math.isfinite(stats["grad_norm_gen"]))
        if (stats["nonfinite_loss"] or stats["dropped_fake"] >= cfg.batch
                or (gen_steps and stats["dropped_gen"] >= cfg.batch)):
            bad_iters += 1
            if bad_iters > cfg.max_bad_iters:
                checkpoint()
                raise RuntimeError(
                    f"{bad_iters} bad iterations (a phase's loss over its kept samples was non-finite, or a phase "
                    f"dropped every sample as non-finite; limit max_bad_iters={cfg.max_bad_iters}); the last "
                    f"checkpoint is in {out / 'checkpoints'}. See dropped_*, nonfinite_loss and sanitized_* in "
                    "log.jsonl; raise max_bad_iters to continue this run, or start a new one with lower learning "
                    "rates or precision=amp")

        nimg += cfg.batch
        stats.update(steps=steps, bad_iters=bad_iters, sec_per_iter=time.perf_counter() - t0)
        stopper.observe_iteration(stats["sec_per_iter"])
        log.step(nimg, stats)
        if on_iteration is not None:
            on_iteration({"nimg": nimg, **stats})
        ticks = nimg // tick
        if snapshot_due():
            log.snapshot(nimg, gen)
            if evaluate is not None:
                # Scored before the tick's checkpoint, so a kill mid-scoring redoes it on resume. A scoring that
                # would run into the job's end is left to the next invocation, which does it first. Before the
                # first measured one: a minute for loading the metric networks, plus an iteration per batch.
                estimate = 60.0 + stopper.iteration_s * getattr(evaluate, "num_images", cfg.batch) / cfg.batch
                if _any_rank(not stopper.evaluation_fits(estimate), world, device):
                    reason, deferred = "time limit (the snapshot is scored when the run continues)", True
                    break
                score_snapshot()
        if (nimg % tick) < cfg.batch and ticks % cfg.checkpoint_ticks == 0:  # crossed a checkpoint tick
            last_ckpt = checkpoint()
    if final_checkpoint and (last_ckpt is None or
                             int(json.loads((last_ckpt / "state.json").read_text())["nimg"]) != nimg):
        last_ckpt = checkpoint()
    finished = nimg >= total and not deferred
    if not finished and not reason:
        reason = "stop_after_kimg"
    log.status("finished" if finished else "stopped", nimg, checkpoint=last_ckpt,
               checkpoint_seconds=stopper.checkpoint_s, reason=reason, deadline=stopper.deadline(),
               job_end=stopper.job_end())
    log.close(nimg, finished=finished)
    if world > 1:  # no rank exits (and so ends the job for torchrun) before rank 0 has written the run's status
        torch.distributed.barrier()
    gc.unfreeze()
    return last_ckpt


def _checkpoint_bytes(models: dict[str, nn.Module]) -> int:
    """This rank's share of a checkpoint: each trained network's weights and Adam's two moments, at full width."""
    total = 0
    for net in models.values():
        for p in net.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += 3 * local.numel() * max(4, local.element_size())
    return total


def _draws(method: SiD, g: torch.Generator, n: int, shape: tuple[int, ...]):
    """Initial latents, the noise of x_t and the times of one micro-batch, always drawn in this order."""
    z = torch.randn((n, *shape), generator=g, device=g.device)
    eps = torch.randn((n, *shape), generator=g, device=g.device)
    return z, eps, method.sample_time(n, g)


def _settle_changed_config(out: Path, cfg: RunConfig, on_change: str) -> str:
    """Compare ``out``'s latest checkpoint's config with ``cfg``; on a difference return the error (``error``) or
    move the old run aside (``restart``). Returns "" when the run may resume (or start)."""
    latest = find_latest(out)
    if latest is None:
        return ""
    saved = json.loads((latest / "state.json").read_text()).get("config", {})
    changes = config_changes(saved, cfg)
    if not changes:
        return ""
    listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in sorted(changes.items())))
    if on_change == "error":
        return (f"{out} holds a run with other settings ({listing}); resuming it would mix two runs. Use a new "
                "--out folder, restore the old values, or pass --on-config-change restart to move the old run "
                "into superseded/ and start afresh")
    dest = out / "superseded" / f"{latest.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    dest.mkdir(parents=True)
    for item in out.iterdir():
        if item.name != "superseded":
            item.rename(dest / item.name)
    (dest / "changes.json").write_text(json.dumps({k: list(v) for k, v in changes.items()}, indent=1))
    print(f"{out}: settings changed ({listing}); the previous run moved to {dest}", flush=True)
    return ""


def _on_rank0(fn, world: int):
    """``fn()`` on rank 0, its result broadcast to every rank."""
    box = [fn() if world == 1 or torch.distributed.get_rank() == 0 else None]
    if world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when any rank has ``flag`` set (a stop seen by one rank must stop all, together)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _sync_grads(net: nn.Module, world: int, *, last: bool) -> None:
    """Gradient accumulation under FSDP2: reduce-scatter only on the last micro-batch (spec §8.1)."""
    if world > 1 and hasattr(net, "set_requires_gradient_sync"):
        net.set_requires_gradient_sync(last)

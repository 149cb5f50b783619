"""One SiD-DiT training iteration against its floor: the network passes it contains, timed in the same process.

The iteration is the trainer's own (``sidrepro.distill.trainer.train`` for a few iterations, its ``sec_per_iter``
log); the floor for an iteration with ``K`` generator steps is the sum of

- fake phase: ``K`` no-grad generator passes (batch B) + the fake network's forward and backward (2B under CFG);
- generator phase: ``K - 1`` no-grad generator passes + one generator pass with grad, the teacher's and the fake
  network's passes (2B each under CFG) and the backward through all three to the generator's weights;

- data-free runs that encode prompts on the fly (``precompute_text`` off, SANA's default): the text encoder's
  pass over each phase's prompts, two per micro-batch;

each timed on its own with the same networks, shapes and precision. The ratio says what the loop adds on top of
the networks (noise, optimiser steps, gradient checks, logging, Python). Each pass is timed over ``--repeats``
runs: the floor from each pass's fastest run is a lower bound; the one from its median is what a single iteration
is compared with when both have the same jitter (both are printed). Host work the device does not see is reported
per iteration: garbage-collection pauses, and with ``--count-ops`` the aten operators dispatched against the
floor's (one per kernel launch, roughly; device independent).

    .venv/bin/python bench/sid_iteration.py --teacher tiny-sd3 --iters 8
    .venv/bin/python bench/sid_iteration.py --teacher sana-1.6b --snapshot /path/to/snapshot --set precision=amp
    python bench/sid_iteration.py --teacher sd3-medium --real-size --set batch=2 --json out.jsonl   # on a GPU

``--real-size`` builds the teacher's transformer at full size with random weights (``bench/real_size.py``), so a
GPU without the hub weights measures the real shapes. Every run also prints the memory model's prediction for one
GPU (``sidrepro/distill/memory.py``) beside the measured peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sidrepro.commands.distill import teacher_folder
from sidrepro.distill.config import parse_overrides, resolve_config
from sidrepro.distill.memory import CUDA_OVERHEAD_GB, GB, estimate
from sidrepro.distill.trainer import autocast, set_allocator_defaults, train
from sidrepro.flow import interpolate, x0_from_velocity
from sidrepro.sid.losses import generator_loss
from sidrepro.teachers.load import load_teacher

PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(best, median) seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def floors(cfg, adapter, repeats: int, timer=_time) -> dict[str, dict[int, float] | float]:
    """Seconds of network passes for an iteration with K = 1..N generator steps (one micro-batch of batch_gpu):
    ``best`` from each pass's fastest repeat, ``typical`` from its median, and ``encode`` the text encoding part
    (best). ``timer(fn, device, repeats)`` returns a (best, median) pair per pass."""
    device = adapter.device
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    teacher, fake, gen = (adapter.load_transformer(dtype) for _ in range(3))
    teacher.requires_grad_(False)
    if cfg.grad_checkpointing:  # all three, as the trainer does (the teacher's backward recomputes its blocks too)
        for net in (teacher, fake, gen):
            net.enable_gradient_checkpointing()
    b = min(cfg.batch_gpu, cfg.batch)
    cond = adapter.encode_prompts((PROMPTS * b)[:b])
    uncond = adapter.empty(b)
    shape = adapter.latent_shape(cfg.resolution)
    x = torch.randn((b, *shape), device=device)
    t = torch.full((b,), 0.6, device=device)

    def gen_pass():
        with torch.no_grad(), autocast(cfg, device):
            adapter.bind(gen, cond).velocity(x, t)

    def fake_train():
        fake.requires_grad_(True)
        with autocast(cfg, device):
            v, _ = adapter.bind(fake, cond, uncond)(x, t, scale=cfg.cfg_train_fake)
        v.float().square().sum().backward()
        fake.zero_grad(set_to_none=True)

    def generator_loss_pass():
        fake.requires_grad_(False)
        gen.requires_grad_(True)
        with autocast(cfg, device):
            x_g = x - t.view(-1, 1, 1, 1) * adapter.bind(gen, cond).velocity(x, t)
            x_t = interpolate(x_g, torch.randn_like(x_g), t)
            v_r, _ = adapter.bind(teacher, cond, uncond)(x_t, t, scale=cfg.cfg_eval_real)
            v_f, _ = adapter.bind(fake, cond, uncond)(x_t, t, scale=cfg.cfg_eval_fake)
            loss = generator_loss(x_g, x0_from_velocity(x_t, v_r, t), x0_from_velocity(x_t, v_f, t), t).sum()
        loss.backward()
        gen.zero_grad(set_to_none=True)

    passes = [timer(fn, device, repeats) for fn in (gen_pass, fake_train, generator_loss_pass)]
    online = cfg.setting == "data-free" and not cfg.precompute_text
    enc = timer(lambda: adapter.encode_prompts((PROMPTS * b)[:b]), device, repeats) if online else (0.0, 0.0)
    rounds = cfg.per_rank(1)[1]
    out: dict[str, dict[int, float] | float] = {"encode": 2 * rounds * enc[0]}
    for i, kind in enumerate(("best", "typical")):
        g_s, f_s, l_s, e_s = passes[0][i], passes[1][i], passes[2][i], 2 * enc[i]
        out[kind] = {k: rounds * (k * g_s + f_s + (k - 1) * g_s + l_s + e_s) for k in range(1, cfg.num_steps + 1)}
    return out


class _OpCounter(TorchDispatchMode):
    """Counts every aten operator that reaches a backend (forward and backward): one per kernel launch, roughly."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _count_ops(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """A ``floors`` timer that counts operators of one call instead of timing it."""
    fn()  # warm-up outside the count, as the timed floor does
    with _OpCounter() as counter:
        fn()
    return float(counter.n), float(counter.n)


class HostWork:
    """Per-iteration rows of the trainer with the host-side work the device does not see: garbage-collection
    pauses (``gc_ms``), on CUDA the new memory segments the caching allocator requested from the driver
    (``cuda_mallocs``: each a slow call, and a full synchronisation when it first has to free cached blocks,
    counted in ``alloc_retries``; growing an expandable segment is not a new segment) and, with ``count_ops``,
    operators dispatched (``ops``). ``mark`` is the trainer's ``on_iteration`` callback."""

    def __init__(self, count_ops: bool = False) -> None:
        self.rows: list[dict] = []
        self.counter = _OpCounter() if count_ops else None
        self._gc_s, self._gc_start, self._ops = 0.0, 0.0, 0
        self._alloc = self._alloc_stats()

    @staticmethod
    def _alloc_stats() -> tuple[int, int]:
        if not torch.cuda.is_available():
            return 0, 0
        stats = torch.cuda.memory_stats()
        return stats.get("segment.all.allocated", 0), stats.get("num_alloc_retries", 0)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self._gc_s += time.perf_counter() - self._gc_start

    def mark(self, row: dict) -> None:
        ops = self.counter.n if self.counter is not None else 0
        alloc = self._alloc_stats()
        self.rows.append({**row, "gc_ms": self._gc_s * 1e3, "ops": ops - self._ops,
                          "cuda_mallocs": alloc[0] - self._alloc[0], "alloc_retries": alloc[1] - self._alloc[1]})
        self._gc_s, self._ops, self._alloc = 0.0, ops, alloc

    def __enter__(self) -> HostWork:
        gc.callbacks.append(self._on_gc)
        if self.counter is not None:
            self.counter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.counter is not None:
            self.counter.__exit__(*exc)
        gc.callbacks.remove(self._on_gc)


def memory_check(teacher: str, cfg, params: int, encoder_bytes: int, measured_bytes: int) -> dict:
    """The memory model's one-GPU prediction for this run beside the measured peak (both in GB)."""
    res = {"sana": 4}.get(teacher.split("-")[0], 1) * cfg.resolution  # the model counts in the real VAE's pixels
    e = estimate(teacher, precision=cfg.precision, gpus=1, batch_gpu=min(cfg.batch_gpu, cfg.batch), resolution=res,
                 grad_checkpointing=cfg.grad_checkpointing, params=params, encoder_gb=encoder_bytes / GB)
    return {"model_states_gb": e.model_states_gb, "gradients_gb": e.gradients_gb, "activations_gb": e.activations_gb,
            "encoders_gb": e.encoders_gb, "peak_phase": e.peak_phase, "predicted_gb": e.total_gb - CUDA_OVERHEAD_GB,
            "measured_gb": measured_bytes / GB}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="tiny-sd3")
    p.add_argument("--snapshot", type=Path, default=None)
    p.add_argument("--real-size", action="store_true",
                   help="build the teacher's transformer at full size with random weights (bench/real_size.py)")
    p.add_argument("--layers", type=int, default=None, help="with --real-size: blocks per stack (a quick CPU check)")
    p.add_argument("--heads", type=int, default=None,
                   help="with --real-size: attention heads (narrower, the same operators per block: CPU op counts)")
    p.add_argument("--iters", type=int, default=8, help="iterations timed (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, default=None, help="append the figures as one JSON line to this file")
    p.add_argument("--profile", type=Path, default=None,
                   help="write torch.profiler's operator tables of the training run (load included) to this file")
    p.add_argument("--count-ops", action="store_true",
                   help="also count the aten operators each iteration and the floor dispatch (a device-independent "
                        "measure of the loop's extra kernel launches; slows the timed run, so time without it)")
    args = p.parse_args()
    set_allocator_defaults()  # as `sidrepro distill` does
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        over: dict[str, str] = {}
        folder = None if args.real_size else teacher_folder(args.teacher, args.snapshot)
        if args.real_size:
            from real_size import build_snapshot

            t0 = time.perf_counter()
            folder, resolution = build_snapshot(args.teacher, Path(tmp) / "snapshot", device=device,
                                                layers=args.layers, heads=args.heads)
            over["resolution"] = str(resolution)
            print(f"built {folder.name} (real-size transformer, random weights) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        over.update({"prompts": str(prompts), "snapshot_ticks": "1000000", "checkpoint_ticks": "1000000",
                     **parse_overrides(args.overrides)})
        cfg, _ = resolve_config(args.teacher, over)
        cfg = replace(cfg, duration_kimg=cfg.batch * args.iters / 1000, tick_kimg=cfg.batch / 1000)
        weights = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        adapter = load_teacher(args.teacher, folder, device=device, dtype=weights)
        encoder_bytes = torch.cuda.memory_allocated() if device == "cuda" else 0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        host = HostWork(count_ops=args.count_ops)
        with _profiler(args.profile), host:
            train(cfg, Path(tmp) / "run", adapter, progress=False, final_checkpoint=False, on_iteration=host.mark)
        peak = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()} \
            if device == "cuda" else {}
        rows = host.rows[1:]  # the first iteration is warm-up
        last = json.loads((Path(tmp) / "run" / "log.jsonl").read_text().splitlines()[-1])
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        floor = floors(cfg, adapter, args.repeats)
        op_floor = floors(cfg, adapter, 1, timer=_count_ops)["best"] if args.count_ops else None
        params = _transformer_params(folder)
    ratios = {kind: [r["sec_per_iter"] / floor[kind][r["steps"]] for r in rows] for kind in ("best", "typical")}
    it = statistics.median(r["sec_per_iter"] for r in rows)
    fl = {kind: statistics.median(floor[kind][r["steps"]] for r in rows) for kind in ("best", "typical")}
    gc_ms = statistics.median(r["gc_ms"] for r in rows)
    mallocs, retries = sum(r["cuda_mallocs"] for r in rows), sum(r["alloc_retries"] for r in rows)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.teacher}{' (real size, random weights)' if args.real_size else ''} on {name}, {cfg.precision}, "
          f"{cfg.resolution} px, batch {cfg.batch}, micro-batch {cfg.batch_gpu}, {len(rows)} timed iterations")
    print(f"iteration {it * 1e3:.1f} ms, network floor {fl['best'] * 1e3:.1f} ms from each pass's fastest repeat "
          f"(text encoding {floor['encode'] * 1e3:.1f}), {fl['typical'] * 1e3:.1f} ms from its median; "
          f"ratio median {statistics.median(ratios['best']):.2f} (min {min(ratios['best']):.2f}, "
          f"max {max(ratios['best']):.2f}), against the median passes {statistics.median(ratios['typical']):.2f}")
    alloc = f"{mallocs} cudaMalloc calls and {retries} allocator retries in the timed iterations; " \
        if device == "cuda" else ""
    print(f"host: garbage collection {gc_ms:.1f} ms per iteration (median, max {max(r['gc_ms'] for r in rows):.1f}); "
          f"{alloc}peak memory {last['peak_mem_gib']:.2f} GiB ({'GPU' if device == 'cuda' else 'process RSS'})")
    result = {"teacher": args.teacher, "real_size": args.real_size, "device": name, "precision": cfg.precision,
              "resolution": cfg.resolution, "batch": cfg.batch, "batch_gpu": cfg.batch_gpu,
              "grad_checkpointing": cfg.grad_checkpointing, "params": params, "iteration_ms": it * 1e3,
              "floor_ms": fl["best"] * 1e3, "floor_typical_ms": fl["typical"] * 1e3,
              "encode_ms": floor["encode"] * 1e3, "ratio_median": statistics.median(ratios["best"]),
              "ratio_min": min(ratios["best"]), "ratio_max": max(ratios["best"]),
              "ratio_median_typical_floor": statistics.median(ratios["typical"]), "gc_ms_median": gc_ms,
              "cuda_mallocs": mallocs, "alloc_retries": retries,
              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
              "iterations": len(rows)}
    if op_floor is not None:
        op_ratios = [r["ops"] / op_floor[r["steps"]] for r in rows]
        result["ops_per_iteration"] = statistics.median(r["ops"] for r in rows)
        result["ops_ratio_median"] = statistics.median(op_ratios)
        print(f"operators dispatched: {result['ops_per_iteration']:.0f} per iteration, ratio to the floor's "
              f"{result['ops_ratio_median']:.3f} (min {min(op_ratios):.3f}, max {max(op_ratios):.3f})")
    if device == "cuda":
        mem = memory_check(args.teacher, cfg, params, encoder_bytes, peak["allocated"])
        mem["reserved_gb"] = peak["reserved"] / GB
        result["memory"] = mem
        print(f"memory, one GPU (GB = 1e9 B): measured peak {mem['measured_gb']:.1f} allocated "
              f"({mem['reserved_gb']:.1f} reserved); model {mem['predicted_gb']:.1f} allocated, peak in the "
              f"{mem['peak_phase']} phase (states {mem['model_states_gb']:.1f}, gradients {mem['gradients_gb']:.1f}, "
              f"activations {mem['activations_gb']:.1f}, encoders {mem['encoders_gb']:.2f})")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


@contextlib.contextmanager
def _profiler(path: Path | None):
    """torch.profiler around the block, its operator tables (by device time and by host time) written to ``path``."""
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        yield
    avg = prof.key_averages()
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    path.write_text(avg.table(sort_by=key, row_limit=40) + "\n\n" + avg.table(sort_by="cpu_time_total", row_limit=60))


def _transformer_params(folder: Path) -> int:
    """Parameters of the snapshot's transformer, read from its safetensors headers."""
    from safetensors import safe_open

    total = 0
    for path in sorted((folder / "transformer").glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total


if __name__ == "__main__":
    sys.exit(main())

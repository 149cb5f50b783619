"""Each rank's memory at start-up and in steady state in a multi-process CPU (gloo) run of the real trainer, against
the memory model's start-up prediction.

The teacher is a real diffusers transformer class with its real config narrowed (``bench/real_size.py``:
``--layers`` blocks, ``--heads`` attention heads; random weights saved in the hub layout as bf16 safetensors, as the
hub ships them). Per rank, resident memory (RSS, GB = 1e9 B) is read from ``/proc/self/status``: the high-water mark
``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``.

1. start-up: the three networks built exactly as the trainer builds them (``sharded_load.load_network`` with the
   trainer's ``shard``), peak over the process's baseline (torch, the process group, the adapter's tiny encoders);
2. steady state: ``train()`` itself for ``--iters`` SiD iterations, peak over iterations 2.. (the first allocates
   the optimiser states); train()'s own start-up is sampled from a thread every 5 ms, for comparison;
3. ``--before``: the former start-up, three full ``from_pretrained`` copies, then ``fully_shard``.

    .venv/bin/python bench/sharded_load.py                      # SD3-Medium narrowed to 12 heads x 8 layers
    .venv/bin/python bench/sharded_load.py --layers 4 --iters 2 --before
    .venv/bin/python bench/sharded_load.py --before --json bench/results/sharded_load_cpu.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

GB = 1e9
PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


# --- resident memory -------------------------------------------------------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def rss() -> int:
    return _status("VmRSS")


def high_water() -> int:
    return _status("VmHWM")


def reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Sampler(threading.Thread):
    """Resident memory every ``period`` seconds, with timestamps (for windows no hook marks)."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period, self.samples, self.running = period, [], True
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        with open("/proc/self/statm") as f:
            while self.running:
                f.seek(0)
                self.samples.append((time.perf_counter(), int(f.read().split()[1]) * self.page))
                time.sleep(self.period)

    def peak(self, t0: float, t1: float) -> int:
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0)


# --- one rank ----------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from sidrepro.distill.config import resolve_config
    from sidrepro.distill.memory import load_estimate, net_sizes
    from sidrepro.distill.sharded_load import load_network, local_part
    from sidrepro.distill.trainer import init_distributed, shard, train, weight_dtype
    from sidrepro.teachers.load import load_teacher

    torch.set_num_threads(1)
    rank, world, device = init_distributed()
    work = Path(args.work)
    cfg, _ = resolve_config(args.teacher, {
        "prompts": str(work / "prompts.txt"), "resolution": str(args.resolution), "batch": str(world),
        "batch_gpu": "1", "precision": args.precision, "duration_kimg": str(world * args.iters / 1000),
        "tick_kimg": str(world / 1000), "snapshot_ticks": "0", "checkpoint_ticks": "1000000",
        "cache_dir": str(work / "cache")})
    dtype = weight_dtype(cfg)
    adapter = load_teacher(args.teacher, work / args.teacher, dtype=dtype)
    sizes = net_sizes(adapter.transformer_class, adapter.transformer_config)
    w = dtype.itemsize
    out: dict = {"rank": rank}

    # 1. Start-up, the trainer's own calls, after a warm-up that imports the modules they use and sets up the
    # device mesh (one network built and sharded on the meta device, then dropped): those are the process's.
    shard(adapter.empty_transformer(dtype))
    gc.collect()
    out["baseline"] = rss()
    reset_high_water()
    t0 = time.perf_counter()
    build = partial(load_network, adapter, dtype, device, shard=shard, grad_checkpointing=cfg.grad_checkpointing)
    nets = [build() for _ in range(3)]
    out["load_s"] = time.perf_counter() - t0
    out["load_peak"] = high_water()
    out["local_bytes"] = sum(local_part(t)[0].nbytes for n in nets for t in n.state_dict(keep_vars=True).values())
    del nets
    gc.collect()
    dist.barrier()

    # 2. Steady state: the real trainer (it loads again); the high-water mark is reset after iteration 1.
    marks: list[tuple[float, float]] = []

    def on_iteration(row: dict) -> None:
        marks.append((time.perf_counter(), row["sec_per_iter"]))
        if len(marks) == 1:
            reset_high_water()

    sampler = Sampler()
    sampler.start()
    gc.collect()
    reset_high_water()
    t_train = time.perf_counter()
    train(cfg, work / "run", adapter, progress=False, final_checkpoint=False, on_iteration=on_iteration)
    out["steady_peak"] = high_water()
    first = marks[0][0] - marks[0][1]
    out["train_startup_sampled"] = sampler.peak(t_train, first)
    out["sec_per_iter"] = [round(s, 1) for _, s in marks]
    sampler.running = False
    sampler.join()
    dist.barrier()

    # 3. The former start-up: three full copies, then sharding.
    if args.before:
        gc.collect()
        base = rss()
        reset_high_water()
        nets = [adapter.load_transformer(dtype) for _ in range(3)]
        nets = [shard(n) for n in nets]
        out["before_peak"] = high_water() - base + out["baseline"]
        del nets
        gc.collect()

    model = load_estimate(args.teacher, precision=cfg.precision, gpus=world, sizes=sizes, encoder_gb=0,
                          overhead_gb=0, cpu=True)
    out["model"] = {"networks": model.networks_gb * GB, "transit": model.transit_gb * GB,
                    "total": model.total_gb * GB}
    out["block"] = w * sizes.largest_block
    out["full"] = w * (sizes.params + sizes.buffers)
    out["params"], out["buffers"] = sizes.params, sizes.buffers
    rows: list = [None] * world
    dist.all_gather_object(rows, out)
    if rank == 0:
        (work / "result.json").write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


# --- the launcher ------------------------------------------------------------------------------------------------
def report(rows: list[dict], args: argparse.Namespace) -> None:
    r0 = rows[0]
    print(f"{args.teacher} narrowed to {args.heads} heads x {args.layers} layers: {r0['params'] / 1e6:.0f} M parameters"
          f" + {r0['buffers'] / 1e6:.1f} M buffer elements; {args.precision} weights; {len(rows)} ranks (gloo, 1 thread"
          f" each); {args.resolution} px; GB = 1e9 B of resident memory (VmHWM)")
    print(f"one full copy {r0['full'] / GB:.3f} GB, three full copies {3 * r0['full'] / GB:.3f} GB, "
          f"largest block {r0['block'] / GB:.3f} GB")
    head = (f"{'rank':>4} {'baseline':>8} {'load peak':>9} {'(+)':>6} {'model (+)':>9} {'error':>6} {'steady':>7} "
            f"{'train() start':>13} {'before':>7} {'load s':>6}  s/iteration")
    print(head)
    for r in rows:
        plus, model = r["load_peak"] - r["baseline"], r["model"]["total"]
        before = f"{r['before_peak'] / GB:>7.3f}" if "before_peak" in r else f"{'-':>7}"
        print(f"{r['rank']:>4} {r['baseline'] / GB:>8.3f} {r['load_peak'] / GB:>9.3f} {plus / GB:>6.3f} "
              f"{model / GB:>9.3f} {100 * (model - plus) / plus:>5.1f}% {r['steady_peak'] / GB:>7.3f} "
              f"{r['train_startup_sampled'] / GB:>13.3f} {before} {r['load_s']:>6.1f}  {r['sec_per_iter']}")
    for r in rows:
        ok = r["load_peak"] <= r["steady_peak"] + r["block"]
        print(f"rank {r['rank']}: load peak {'<=' if ok else '>'} steady-state peak + one block "
              f"({r['load_peak'] / GB:.3f} vs {(r['steady_peak'] + r['block']) / GB:.3f} GB); load increment "
              f"{(r['load_peak'] - r['baseline']) / (3 * r['full']):.2f} of three full copies; this rank's tensors "
              f"{r['local_bytes'] / GB:.3f} GB (model: networks {r['model']['networks'] / GB:.3f} + in flight "
              f"{r['model']['transit'] / GB:.3f})")


def record(rows: list[dict], args: argparse.Namespace, work: Path) -> dict:
    """The run as one JSON line (``bench/results/sharded_load_cpu.jsonl``; tests check the model against it), with
    the transformer's class and config as measured."""
    import platform

    config = json.loads((work / args.teacher / "transformer" / "config.json").read_text())

    keep = ("rank", "baseline", "load_peak", "steady_peak", "train_startup_sampled", "before_peak", "local_bytes",
            "load_s", "sec_per_iter", "model")
    return {"teacher": args.teacher, "layers": args.layers, "heads": args.heads, "resolution": args.resolution,
            "precision": args.precision, "ranks": len(rows), "device": f"cpu ({platform.processor() or 'x86_64'}), "
            "gloo, 1 thread per rank", "params": rows[0]["params"], "buffers": rows[0]["buffers"],
            "block_bytes": rows[0]["block"], "full_bytes": rows[0]["full"], "transformer_class": config["_class_name"],
            "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "per_rank": [{k: r[k] for k in keep if k in r} for r in rows]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="sd3-medium")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "bf16"])
    p.add_argument("--iters", type=int, default=3, help="SiD iterations of the steady state (the first is excluded)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--before", action="store_true", help="also measure the former start-up (three full copies)")
    p.add_argument("--work", default=None, help="folder for the snapshot and the run (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="append the figures as one JSON line to this file")
    p.add_argument("--report", type=Path, default=None, help="print the figures of a finished run's result.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.report:
        rows = json.loads(args.report.read_text())
        report(rows, args)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record(rows, args, args.report.parent)) + "\n")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_size import build_snapshot

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        t0 = time.perf_counter()
        build_snapshot(args.teacher, work, layers=args.layers, heads=args.heads)
        print(f"snapshot built in {time.perf_counter() - t0:.0f} s", flush=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               __file__, *sys.argv[1:], "--worker", "--work", str(work)]
        # Allocations from 64 kB up get their own mappings, returned to the system when freed: resident memory
        # then follows what is alive (glibc's adaptive threshold would serve them from heaps it keeps).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        subprocess.run(cmd, check=True, env=env)
        rows = json.loads((work / "result.json").read_text())
        report(rows, args)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record(rows, args, work)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

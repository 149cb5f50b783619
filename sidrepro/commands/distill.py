"""``sidrepro distill | export | generate``: train a SiD student of a teacher, export it as a diffusers pipeline
folder, and sample images from it in 4 steps."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from .teachers import DEFAULT_SNAPSHOTS, DEFAULT_ZOO


def add(sub) -> None:
    p = sub.add_parser("distill", help="SiD distillation of a teacher (resumes automatically in --out)",
                       description="Distil a teacher into a few-step generator. Values come from the teacher's "
                                   "preset (spec §10) and --set overrides; the resolved config, with the source of "
                                   "every value, is written to OUT/config.json. Re-running the same command in the "
                                   "same folder resumes from the latest complete checkpoint.")
    p.add_argument("--teacher", required=True, help="a teacher name (see `sidrepro teachers`)")
    p.add_argument("--setting", choices=("data-free", "data-aided"), default="data-free")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, grids)")
    p.add_argument("--snapshot", type=Path, default=None,
                   help="the teacher's local folder (default: the zoo folder for tiny teachers, else the fetched "
                        "snapshot under $SIDREPRO_SNAPSHOTS)")
    p.add_argument("--prompts", type=Path, default=None, help="data-free prompt file, one prompt per line")
    p.add_argument("--shards", type=Path, default=None, help="data-aided image-text parquet folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set lr=1e-6 --set batch=64")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node; >1 relaunches via torchrun")
    p.add_argument("--nnodes", type=int, default=1,
                   help="nodes: inside a SLURM job, one torchrun per node of the allocation; elsewhere start the "
                        "same command on every node with MASTER_ADDR/MASTER_PORT set")
    p.add_argument("--stop-after-kimg", type=float, default=None,
                   help="checkpoint and stop this invocation after this many kimg (the run resumes later)")
    p.add_argument("--on-config-change", choices=("error", "restart"), default="error",
                   help="OUT holds checkpoints saved with other settings: refuse (default), or move that run into "
                        "OUT/superseded/ and start afresh (the workflow, after a hyper-parameter changed)")
    p.add_argument("--on-stop", choices=("exit", "requeue"), default="exit",
                   help="when this invocation stops before the run is finished (the job's time limit is near, a "
                        "SIGTERM/SIGUSR1, a STOP file, --stop-after-kimg): exit with status 75 after the checkpoint "
                        "(default; run the same command again to continue), or, inside a SLURM batch job, also "
                        "requeue the job so that it continues by itself (the workflow)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("snapshot selection", "score every generator snapshot as the run trains (every "
                             "snapshot_ticks ticks and at the end) and keep the ones a rule may choose; "
                             "`sidrepro export --select RULE` then exports the chosen one")
    g.add_argument("--select-protocol", default=None, metavar="PROTOCOL",
                   help="paper: FID and CLIP on the 10k evaluation captions (what the paper did); clean: on the "
                        "held-out captions no reported subset contains")
    g.add_argument("--reference", type=Path, default=None, help="the prepared COCO reference (`sidrepro coco`)")
    g.add_argument("--select-count", type=int, default=None, help="captions per snapshot (default: the subset's)")
    g.add_argument("--select-batch", type=int, default=8, help="images per sampling batch and rank")
    g.add_argument("--clip-model", default=None, help="override the protocol's CLIP model (with --clip-weights)")
    g.add_argument("--clip-weights", default=None, help="open_clip pretrained tag or weights file")
    p.set_defaults(func=_distill)

    p = sub.add_parser("export", help="write a run's generator as a diffusers pipeline folder with a model card")
    p.add_argument("--run", type=Path, required=True, help="the run folder of `sidrepro distill`")
    p.add_argument("--out", type=Path, required=True, help="the student folder to write")
    p.add_argument("--snapshot", type=Path, default=None, help="the teacher's local folder (default as distill)")
    p.add_argument("--select", default=None, metavar="RULE",
                   help="export the generator snapshot this rule chooses among the run's scored snapshots "
                        "(best-fid, best-clip, last) instead of the latest checkpoint")
    p.set_defaults(func=_export)

    p = sub.add_parser("generate", help="images from an exported student with the SiD few-step sampler")
    p.add_argument("--student", type=Path, required=True, help="a folder written by `sidrepro export`")
    p.add_argument("--prompts", type=Path, required=True, help="one prompt per line")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the student's)")
    p.add_argument("--batch", type=int, default=4)
    p.set_defaults(func=_generate)


def teacher_folder(name: str, snapshot: Path | None) -> Path:
    """Where a teacher's files are: an explicit folder, the zoo folder for tiny teachers, or the fetched snapshot."""
    from ..teachers.hub import default_snapshot_dir
    from ..teachers.registry import get_teacher

    if snapshot is not None:
        return snapshot
    entry = get_teacher(name)
    if entry.zoo:
        folder = DEFAULT_ZOO / name
        if not folder.is_dir():
            from ..teachers.zoo import build_zoo

            build_zoo(DEFAULT_ZOO, names=[name])
        return folder
    return default_snapshot_dir(DEFAULT_SNAPSHOTS, entry.hub_id)


def _relaunch(args: argparse.Namespace) -> int:
    """Run this same command as ``--nproc`` ranks per node on ``--nnodes`` nodes (see ``launch.torchrun_command``)."""
    from .launch import torchrun_command

    argv, skip = [], False
    for a in sys.argv[1:]:  # the launcher's own options stay out of the ranks' command lines
        if skip:
            skip = False
        elif a in ("--nproc", "--nnodes"):
            skip = True
        elif not a.startswith(("--nproc=", "--nnodes=")):
            argv.append(a)
    return subprocess.call(torchrun_command(args.nproc, args.nnodes, argv))


def _outcome(args: argparse.Namespace, started: float, rc: int) -> int:
    """The exit status of an invocation, from what its rank 0 wrote to ``status.json`` after ``started``: 0 when
    the run is finished, ``EXIT_CONTINUE`` (and a requeue with ``--on-stop requeue``) when it stopped to be
    continued, otherwise the ranks' own failure. A status left by an earlier invocation is never trusted."""
    from ..runstatus import read_status
    from ..stopping import EXIT_CONTINUE, requeue_slurm_job

    status = read_status(args.out)
    state = status.get("state") if float(status.get("updated") or 0) >= started else None
    if state == "finished":
        return 0
    if state != "stopped":
        return rc or 1
    print(f"{args.out}: stopped at {status.get('nimg')} of {status.get('total_nimg')} images "
          f"({status.get('reason')}); checkpoint {status.get('checkpoint')}. The same command continues it.",
          flush=True)
    if args.on_stop == "requeue":
        requeue_slurm_job()
    return EXIT_CONTINUE


def _distill(args: argparse.Namespace) -> int:
    import time

    from ..distill.trainer import set_allocator_defaults
    from ..runstatus import read_status, write_status
    from ..stopping import EXIT_CONTINUE

    set_allocator_defaults()  # before any CUDA allocation, and inherited by the ranks of a relaunch
    started = time.time()
    if (args.nproc > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        return _outcome(args, started, _relaunch(args))
    try:
        _train(args)
    except Exception as e:
        # A run folder records why its invocation failed; bad arguments (no folder yet) only get their own error.
        if os.environ.get("RANK", "0") == "0" and args.out.is_dir():
            with contextlib.suppress(OSError):
                write_status(args.out, state="failed", reason=f"{type(e).__name__}: {e}")
        raise
    if "WORLD_SIZE" in os.environ:  # a rank of a relaunch: the launcher decides; a stopped rank never says "done"
        return 0 if read_status(args.out).get("state") == "finished" else EXIT_CONTINUE
    return _outcome(args, started, 0)


def _train(args: argparse.Namespace) -> None:
    import torch

    from ..distill.config import parse_overrides, resolve_config
    from ..distill.trainer import train
    from ..teachers.load import load_teacher

    overrides = parse_overrides(args.overrides)
    for key, value in (("prompts", args.prompts), ("shards", args.shards)):
        if value is not None:
            overrides[key] = str(value)
    if args.setting != "data-free":
        overrides["setting"] = args.setting
    cfg, sources = resolve_config(args.teacher, overrides)
    folder = teacher_folder(args.teacher, args.snapshot or (Path(cfg.snapshot) if cfg.snapshot else None))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    text_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(cfg.text_dtype)
    weights = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    evaluate = _snapshot_evaluator(args, cfg, device)
    adapter = load_teacher(args.teacher, folder, device=device, dtype=weights, text_dtype=text_dtype)
    ckpt = train(cfg, args.out, adapter, progress=not args.quiet, stop_after_kimg=args.stop_after_kimg,
                 sources=sources, on_config_change=args.on_config_change, evaluate=evaluate)
    print(f"checkpoint {ckpt}")


def _snapshot_evaluator(args: argparse.Namespace, cfg, device: str):
    """The scorer of snapshots that ``--select-protocol`` asks for (None without it), checked before training."""
    from ..selection import check_interval, check_protocol

    if args.select_protocol is None:
        return None
    check_protocol(args.select_protocol)
    if args.reference is None:
        raise ValueError("--select-protocol needs --reference, the prepared COCO reference (`sidrepro coco`)")
    if not cfg.snapshot_ticks:
        raise ValueError("--select-protocol needs snapshots: set snapshot_ticks > 0 (--set snapshot_ticks=25)")
    check_interval(cfg.snapshot_ticks * cfg.tick_kimg, cfg.duration_kimg)
    if bool(args.clip_model) != bool(args.clip_weights):
        raise ValueError("--clip-model and --clip-weights go together")
    from ..evaluate.snapshot_eval import SnapshotEvaluator

    clip = (args.clip_model, args.clip_weights) if args.clip_model else None
    return SnapshotEvaluator(args.reference, args.select_protocol, count=args.select_count, batch=args.select_batch,
                             clip=clip, device=device)


def _export(args: argparse.Namespace) -> int:
    import json

    from ..distill.export import export_student

    cfg = json.loads((args.run / "config.json").read_text())["config"]
    folder = teacher_folder(cfg["teacher"], args.snapshot or (Path(cfg["snapshot"]) if cfg["snapshot"] else None))
    out = export_student(args.run, folder, args.out, select=args.select)
    print(f"student pipeline in {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..distill.export import generate_images
    from ..distill.prompts import read_lines

    prompts = read_lines(args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(len(prompts))]
    n = 0
    for seed, _prompt, image in generate_images(args.student, prompts, seeds, batch=args.batch, steps=args.steps):
        tmp = args.out / f".{seed:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        tmp.replace(args.out / f"{seed:06d}.png")
        n += 1
    print(f"{n} images in {args.out}")
    return 0

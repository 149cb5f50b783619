"""``sidrepro fid-curve``: FID of every kept checkpoint of a distillation run, for the FID-against-kimg plot."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add(sub) -> None:
    """Register the command on an argparse sub-parser collection."""
    p = sub.add_parser("fid-curve", help="FID of each kept checkpoint of a run (CSV and PNG against kimg)",
                       description="Export each complete checkpoint of RUN as a student, sample it on a caption "
                                   "subset of the reference (held-out by default: never the reported one) and score "
                                   "FID against the protocol's statistics. Samples stay in RUN/fid/ (resumable); the "
                                   "exported students are removed after scoring.")
    p.add_argument("--run", type=Path, required=True, help="a run folder of `sidrepro distill`")
    p.add_argument("--snapshot", type=Path, required=True, help="the teacher's snapshot folder")
    p.add_argument("--reference", type=Path, required=True, help="the folder written by `sidrepro coco`")
    p.add_argument("--protocol", default="paper")
    p.add_argument("--subset", default="heldout", help="caption subset (default heldout)")
    p.add_argument("--count", type=int, default=1000, help="images per checkpoint (default 1000)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write (checkpoint, kimg, num_images, fid, ...)")
    p.add_argument("--png", type=Path, default=None, help="also plot FID against kimg here")
    p.add_argument("--batch", type=int, default=8)
    p.set_defaults(func=_fid_curve)


def _fid_curve(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..distill.checkpoint import complete_checkpoints
    from ..distill.export import export_student
    from ..evaluate.fid_curve import student_fid, write_curve

    checkpoints = complete_checkpoints(args.run)
    if not checkpoints:
        raise FileNotFoundError(f"no complete checkpoint under {args.run}: train first (`sidrepro distill`)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for ckpt in checkpoints:
        work = args.run / "fid" / ckpt.name
        student = work / "student"
        if not student.exists():
            export_student(args.run, args.snapshot, student, checkpoint=ckpt)
        fid = student_fid(student, args.reference, work / f"samples-{args.subset}-{args.count}",
                          protocol=args.protocol, subset=args.subset, count=args.count, batch=args.batch,
                          device=device, dtype=dtype)
        shutil.rmtree(student)  # a full pipeline copy per checkpoint would fill the disk on real teachers
        state = json.loads((ckpt / "state.json").read_text())
        kimg = (int(state["nimg"]) + int(state.get("init_nimg", 0))) / 1000
        rows.append({"checkpoint": ckpt.name, "kimg": kimg, "num_images": args.count, "fid": round(fid, 4),
                     "subset": args.subset, "protocol": args.protocol})
        print(f"{ckpt.name}: {kimg:g} kimg, FID {fid:.3f}", flush=True)
    write_curve(rows, args.out, args.png, title=f"{args.run} ({args.subset})")
    return 0

"""``sidrepro fid-curve``: FID (and CLIP) of every scored generator snapshot of a distillation run, for the
FID-against-kimg plot, with the snapshot a selection rule chooses marked."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub) -> None:
    """Register the command on an argparse sub-parser collection."""
    p = sub.add_parser("fid-curve", help="FID of each scored snapshot of a run (CSV and PNG against kimg)",
                       description="Read the scores RUN gave its generator snapshots as it trained (`sidrepro "
                                   "distill --select-protocol`) and write them as a CSV and a plot, the snapshot "
                                   "RULE chooses marked. Nothing is sampled: the run scored each snapshot once.")
    p.add_argument("--run", type=Path, required=True, help="a run folder of `sidrepro distill`")
    p.add_argument("--select", default="best-fid", metavar="RULE", help="the rule whose choice is marked")
    p.add_argument("--out", type=Path, required=True, help="CSV to write (checkpoint, kimg, num_images, fid, ...)")
    p.add_argument("--png", type=Path, default=None, help="also plot FID against kimg here")
    p.set_defaults(func=_fid_curve)


def _fid_curve(args: argparse.Namespace) -> int:
    from ..evaluate.fid_curve import curve_rows, write_curve

    rows = curve_rows(args.run, args.select)
    for r in rows:
        print(f"{r['checkpoint']}: {r['kimg']:g} kimg, FID {r['fid']:.3f}, CLIP {r['clip']:.4f}"
              f"{'  <- ' + args.select if r['selected'] else ''}", flush=True)
    write_curve(rows, args.out, args.png, title=f"{args.run.name} ({rows[0]['subset']}, {args.select})")
    return 0

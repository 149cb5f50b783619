"""``sidrepro table | merge-samples | tiny-clip``: the workflow's small steps — paper-vs-ours tables,
merging the shard manifests of a sample folder, and the tiny offline CLIP model of the smoke workflow."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub) -> None:
    """Register the workflow commands on an argparse sub-parser collection."""
    p = sub.add_parser("table", help="one of the paper's tables with our metrics next to the paper's numbers")
    p.add_argument("--table", required=True, help="table id (table1, table2)")
    p.add_argument("--version", default="v2", help="paper version the numbers come from (v1, v2; default v2)")
    p.add_argument("--metrics", type=Path, nargs="*", default=[], help="metrics JSON files of `sidrepro evaluate`")
    p.add_argument("--map", required=True, dest="mapping",
                   help="model id (metrics file stem) -> {block, setting, row, steps}: inline JSON or a JSON file")
    p.add_argument("--run", default="paper", help="label of this run in the 'run' column (paper, smoke)")
    p.add_argument("--paper-csv", type=Path, default=None, help="the paper's numbers (default: the bundled CSV)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.set_defaults(func=_table)

    p = sub.add_parser("merge-samples", help="merge a sample folder's shard manifests into manifest.jsonl")
    p.add_argument("samples", type=Path, help="the folder every shard of `sidrepro sample` wrote into")
    p.set_defaults(func=_merge)

    p = sub.add_parser("tiny-clip", help="write the tiny offline CLIP model (random weights) for smoke runs")
    p.add_argument("--out", type=Path, required=True, help="folder for its config and weights")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny_clip)


def _table(args: argparse.Namespace) -> int:
    from ..tables import PAPER_CSV, build_table, load_mapping, write_table

    rows = build_table(args.table, args.version, args.metrics, load_mapping(args.mapping), run=args.run,
                       paper_csv=args.paper_csv or PAPER_CSV)
    write_table(rows, args.out)
    measured = sum(1 for r in rows if r["model"])
    print(f"{args.table} ({args.version}, {args.run}): {len(rows)} rows, {measured} measured -> {args.out}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from ..evaluate.sampling import merge_manifests

    print(f"all images: {merge_manifests(args.samples)}")
    return 0


def _tiny_clip(args: argparse.Namespace) -> int:
    from ..evaluate.clip_score import tiny_clip_checkpoint

    name, weights = tiny_clip_checkpoint(args.out, seed=args.seed)
    print(f"{name}: {weights}")
    return 0



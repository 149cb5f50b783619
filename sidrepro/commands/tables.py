"""``sidrepro table | provenance | merge-samples | grid | tiny-clip``: the workflow's small steps — paper-vs-ours
tables, tracing a table number to what produced it, merging the shard manifests of a sample folder, a contact
sheet of one, and the tiny offline CLIP model of the smoke workflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add(sub) -> None:
    """Register the workflow commands on an argparse sub-parser collection."""
    p = sub.add_parser("table", help="one of the paper's tables with our metrics next to the paper's numbers")
    p.add_argument("--table", required=True, nargs="+",
                   help="table id (table1, table2); several write their rows one after the other into one CSV")
    p.add_argument("--version", default="v2", help="paper version the numbers come from (v1, v2; default v2)")
    p.add_argument("--metrics", type=Path, nargs="*", default=[], help="metrics JSON files of `sidrepro evaluate`")
    p.add_argument("--scores", type=Path, nargs="*", default=[],
                   help="score files (SCORES/{model id}/{metric}.json) of `sidrepro score` / `sidrepro geneval score`")
    p.add_argument("--map", required=True, dest="mapping",
                   help="model id (metrics file stem) -> {block, setting, row, steps}: inline JSON or a JSON file")
    p.add_argument("--run", default="paper", help="label of this run in the 'run' column (paper, smoke)")
    p.add_argument("--paper-csv", type=Path, default=None, help="the paper's numbers (default: the bundled CSV)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("--json", type=Path, default=None, help="also write the measured numbers as JSON (DVC metrics)")
    p.add_argument("--measured-only", action="store_true",
                   help="only the rows with a metrics file (the sweep table), not every row of the paper's table")
    p.set_defaults(func=_table)

    p = sub.add_parser("provenance", help="what produced one number of a results table, with hashes",
                       description="Trace a table cell to its metrics file, samples, reference statistics, model "
                                   "(checkpoint and training parameters for a student), code revisions and DVC "
                                   "record, and check every recorded hash against the files on disk.")
    p.add_argument("table", type=Path, help="a results table, e.g. results/table1.csv")
    p.add_argument("--row", required=True, help="model id (the table's 'model' column) or part of the row name")
    p.add_argument("--metric", default=None, help="a metric column stem, e.g. FID_coco10k or CLIP_vitg14")
    p.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="DVC lock file (default dvc.lock)")
    p.add_argument("--json", action="store_true", help="print the full record (all parameters) as JSON")
    p.set_defaults(func=_provenance)

    p = sub.add_parser("merge-samples", help="merge a sample folder's shard manifests into manifest.jsonl")
    p.add_argument("samples", type=Path, help="the folder every shard of `sidrepro sample` wrote into")
    p.set_defaults(func=_merge)

    p = sub.add_parser("grid", help="a captioned contact sheet of a merged sample folder (PNG)")
    p.add_argument("samples", type=Path, help="a sample folder with its merged manifest.jsonl")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--count", type=int, default=16, help="images, in prompt-id order (default 16)")
    p.add_argument("--columns", type=int, default=4)
    p.set_defaults(func=_grid)

    p = sub.add_parser("tiny-clip", help="write the tiny offline CLIP model (random weights) for smoke runs")
    p.add_argument("--out", type=Path, required=True, help="folder for its config and weights")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny_clip)


def _table(args: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic
    from ..tables import PAPER_CSV, build_table, load_mapping, table_metrics, write_table

    if args.json is not None and len(args.table) > 1:
        raise ValueError("--json takes one --table (its numbers are one DVC metrics file)")
    mapping = load_mapping(args.mapping)
    rows = [row for table in args.table
            for row in build_table(table, args.version, args.metrics, mapping, run=args.run,
                                   paper_csv=args.paper_csv or PAPER_CSV, scores=args.scores)]
    if args.measured_only:
        rows = [r for r in rows if r["model"]]
    write_table(rows, args.out)
    if args.json is not None:
        write_json_atomic(args.json, table_metrics(rows))
    measured = sum(1 for r in rows if r["model"])
    print(f"{' '.join(args.table)} ({args.version}, {args.run}): {len(rows)} rows, {measured} measured -> {args.out}")
    return 0


def _provenance(args: argparse.Namespace) -> int:
    import json

    from ..provenance import ProvenanceError, format_trace, trace

    try:
        record = trace(args.table, args.row, args.metric, lock=args.lock)
    except ProvenanceError as exc:
        print(f"sidrepro provenance: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else format_trace(record))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from ..evaluate.sampling import merge_manifests

    print(f"all images: {merge_manifests(args.samples)}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from ..evaluate.grid import sample_grid

    print(sample_grid(args.samples, args.out, count=args.count, columns=args.columns))
    return 0


def _tiny_clip(args: argparse.Namespace) -> int:
    from ..evaluate.clip_score import tiny_clip_checkpoint

    name, weights = tiny_clip_checkpoint(args.out, seed=args.seed)
    print(f"{name}: {weights}")
    return 0



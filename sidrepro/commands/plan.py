"""``sidrepro plan``: what a workflow config costs (jobs, GPU-hours, peak GPU memory, disk per stage, critical path
and wall time on N nodes), from the measured benchmarks in ``bench/results/``. Reads files only: runs on a login
node, without Snakemake."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import positive_int


def add(sub) -> None:
    """Register ``plan`` on an argparse sub-parser collection."""
    p = sub.add_parser("plan", help="cost plan of a workflow config: GPU-hours, memory, disk, critical path",
                       description="Per job type of a workflow config: job count, GPUs, GPU-hours (from the measured "
                                   "benchmarks in bench/results/, marked where extrapolated), peak GPU memory of "
                                   "distillation, disk written per stage, and the critical path and wall time on "
                                   "N nodes.")
    p.add_argument("--configfile", type=Path, default=Path("workflow/config/paper.yaml"),
                   help="workflow config (default workflow/config/paper.yaml)")
    p.add_argument("--nodes", type=positive_int, default=None,
                   help="nodes shared by all jobs (default: the most any one job needs)")
    p.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu", default="h100",
                   help="GPU the figures are for: one measured in bench/results/sid_iteration_<gpu>.jsonl "
                        "(default h100)")
    p.add_argument("--bench", type=Path, default=None, help="folder of the benchmark results (default bench/results)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (every figure with its source)")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from ..plan import make_plan
    from ..plan.bench import BENCH_DIR
    from ..plan.report import format_text, to_json

    plan = make_plan(args.configfile, nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu=args.gpu.lower(),
                     bench_dir=args.bench or BENCH_DIR)
    print(json.dumps(to_json(plan), indent=1) if args.json else format_text(plan))
    return 0

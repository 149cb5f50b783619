"""``sidrepro status``: where each training run and sample folder of a workflow stands, from its files only (no
scheduler, no torch: it runs on a login node while the jobs write)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path("workflow/config/paper.yaml")


def add(sub) -> None:
    """Register the command on an argparse sub-parser collection."""
    p = sub.add_parser("status", help="where each distillation run and sample folder of a workflow stands",
                       description="Per training run: state, images seen of its target, images per second, ETA, the "
                                   "last complete checkpoint and the last snapshot (sample grid, FID per checkpoint). "
                                   "Per sample folder: shards and images done of those planned, merged or not. Reads "
                                   "only the files under the workflow's root.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--configfile", type=Path, default=None,
                       help=f"a workflow config: every run and sample folder it asks for (default {DEFAULT_CONFIG})")
    where.add_argument("--root", type=Path, default=None,
                       help="a workflow root (e.g. work/smoke): every run and sample folder found there")
    p.add_argument("--json", action="store_true", help="print JSON (one object per redraw with --watch)")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    p.add_argument("--stale", type=float, default=None, metavar="SECONDS",
                   help="a run that wrote nothing for this long is shown as 'no heartbeat' (default 600)")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    from ..status import STALE_SECONDS, config_status, format_table, load_config, root_status

    if args.watch is not None and args.watch <= 0:
        raise ValueError(f"--watch takes a positive number of seconds, got {args.watch}")
    stale = STALE_SECONDS if args.stale is None else args.stale
    if args.root is not None:
        def read():
            return root_status(args.root, stale_after=stale)
    else:
        config = load_config(args.configfile or DEFAULT_CONFIG)

        def read():
            return config_status(config, stale_after=stale)

    clear = args.watch is not None and not args.json and sys.stdout.isatty()
    try:
        while True:
            status = read()
            text = json.dumps(status.to_json(), indent=None if args.watch else 1) if args.json else format_table(status)
            print(("\x1b[H\x1b[2J" if clear else "") + text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:  # the way --watch ends
        return 0

"""``sidrepro env``: build (or reuse) a separate pinned environment for a tool that cannot live in the main one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add(sub) -> None:
    """Register the command on an argparse sub-parser collection."""
    p = sub.add_parser("env", help="build or reuse a separate pinned venv from a pin file (GenEval, scorers)",
                       description="Create OUT as a venv of the pin file's '# python: X.Y' interpreter with exactly "
                                   "its pins, or reuse OUT when it was built from the same file. OUT/env.json "
                                   "records the pins' hash and the installed versions.")
    p.add_argument("--spec", type=Path, required=True, help="pin file, e.g. workflow/envs/geneval.txt")
    p.add_argument("--out", type=Path, default=None,
                   help="environment folder (default: $SIDREPRO_ENVS or ~/.cache/sidrepro/envs, then "
                        "<spec name>-<spec hash>)")
    p.add_argument("--log", type=Path, default=None, help="append pip's output here")
    p.set_defaults(func=_env)


def _env(args: argparse.Namespace) -> int:
    from ..envs import EnvError, ensure_env, env_dir_for

    out = args.out or env_dir_for(args.spec)
    try:
        record = ensure_env(args.spec, out, log=args.log)
    except EnvError as exc:
        print(f"sidrepro env: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: Python {record['python']}, {len(record['freeze'])} packages ({args.spec})")
    return 0

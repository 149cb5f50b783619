"""``sidrepro teachers | zoo | fetch | doctor``: list the paper's models, build the tiny zoo, fetch pinned hub
snapshots, and check a machine before a run. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_SNAPSHOTS = Path(os.environ.get("SIDREPRO_SNAPSHOTS", "snapshots"))
DEFAULT_LOCK = Path("env/hub-lock.json")
DEFAULT_ZOO = Path(os.environ.get("SIDREPRO_ZOO", "work/zoo"))


def add(sub) -> None:
    """Register the teacher commands on an argparse sub-parser collection."""
    p = sub.add_parser("teachers", help="list the teachers and baselines of the paper's tables")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_teachers)

    p = sub.add_parser("zoo", help="build the tiny offline teachers (real classes, random weights, hub layout)")
    p.add_argument("--out", type=Path, default=DEFAULT_ZOO, help=f"zoo folder (default {DEFAULT_ZOO})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", nargs="+", default=None, help="only these entries (default: all)")
    p.add_argument("--overwrite", action="store_true", help="rebuild entries that already exist")
    p.set_defaults(func=_zoo)

    p = sub.add_parser("fetch", help="download pinned hub snapshots of teachers or baselines",
                       description="Download each model's files at the commit recorded in the lock file (the first "
                                   "fetch records it). The token comes from HF_TOKEN or `hf auth login`.")
    p.add_argument("names", nargs="+", help="teacher or baseline names (see `sidrepro teachers`)")
    p.add_argument("--snapshots", type=Path, default=DEFAULT_SNAPSHOTS,
                   help=f"snapshot folder (default {DEFAULT_SNAPSHOTS}, or $SIDREPRO_SNAPSHOTS)")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    p.add_argument("--update-lock", action="store_true", help="re-resolve the revisions and rewrite the lock")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("doctor", help="preflight: what is missing or will fail for these models, with fixes")
    p.add_argument("names", nargs="*", help="teacher or baseline names (default: every hub teacher)")
    p.add_argument("--snapshots", type=Path, default=DEFAULT_SNAPSHOTS)
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    p.add_argument("--gpus", type=int, default=None, help="GPUs the run will need (default: skip the count check)")
    p.set_defaults(func=_doctor)


def _repos(name: str) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(repo id, revision, allow patterns) that a teacher or baseline needs."""
    from ..teachers.registry import BASELINES, TEACHERS, get_teacher

    if name in TEACHERS:
        e = get_teacher(name)
        if e.zoo:
            raise ValueError(f"{name!r} is a tiny zoo model: build it with `sidrepro zoo`, there is nothing to fetch")
        return [(e.hub_id, e.revision, e.allow_patterns)]
    if name in BASELINES:
        b = BASELINES[name]
        out = [(b.hub_id, b.revision, None)]
        if b.lora_id:
            out.append((b.lora_id, b.lora_revision, (b.lora_weight_name,) if b.lora_weight_name else None))
        return out
    raise ValueError(f"unknown model {name!r}; `sidrepro teachers` lists the teachers and baselines")


def _teachers(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ..teachers.registry import BASELINES, TEACHERS

    if args.json:
        print(json.dumps({"teachers": {k: asdict(v) for k, v in TEACHERS.items()},
                          "baselines": {k: asdict(v) for k, v in BASELINES.items()}}, indent=1))
        return 0
    print(f"{'teacher':26} {'family':6} {'res':>5} {'time':>5} {'steps':>5} {'cfg':>4} {'gated':>5}  hub id")
    for e in TEACHERS.values():
        hub = "(tiny zoo)" if e.zoo else f"{e.hub_id}@{e.revision}"
        print(f"{e.name:26} {e.family:6} {e.resolution:>5} {e.time_scale:>5g} {e.sample_steps:>5} "
              f"{e.sample_guidance:>4g} {'yes' if e.gated else 'no':>5}  {hub}")
    print(f"\n{'baseline':26} {'family':11} {'steps':>5} {'cfg':>4}  hub id (+ LoRA)")
    for b in BASELINES.values():
        lora = f" + {b.lora_id}" + (f":{b.lora_weight_name}" if b.lora_weight_name else "") if b.lora_id else ""
        print(f"{b.name:26} {b.family:11} {b.steps:>5} {b.guidance:>4g}  {b.hub_id}{lora}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    import time

    from ..teachers.zoo import build_zoo

    t0 = time.time()
    built = build_zoo(args.out, seed=args.seed, names=args.names, overwrite=args.overwrite)
    for name, folder in built.items():
        print(f"{name:26} {folder}")
    print(f"{len(built)} tiny models in {args.out} ({time.time() - t0:.1f} s)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..teachers.hub import HubError, default_snapshot_dir, fetch_snapshot

    jobs = [job for name in args.names for job in _repos(name)]  # validate every name before downloading
    failed = 0
    for repo_id, revision, patterns in jobs:
        dest = default_snapshot_dir(args.snapshots, repo_id)  # one folder per repo
        try:
            snap = fetch_snapshot(repo_id, revision, dest, allow_patterns=patterns, lock_file=args.lock,
                                  update_lock=args.update_lock)
        except HubError as err:
            failed += 1
            print(f"{repo_id}: {err}")
            continue
        print(f"{repo_id}@{snap.commit[:12]}: {len(snap.files)} files in {snap.path}")
    return 1 if failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from ..teachers.doctor import failures, format_report, run_checks
    from ..teachers.registry import BASELINES, TEACHERS

    names = args.names or [n for n, e in TEACHERS.items() if not e.zoo]
    entries = []
    for name in names:
        if name in TEACHERS:
            entries.append(TEACHERS[name])
        elif name in BASELINES:
            entries.append(BASELINES[name])
        else:
            raise ValueError(f"unknown model {name!r}; `sidrepro teachers` lists the teachers and baselines")
    checks = run_checks(entries, snapshots_dir=args.snapshots, lock_file=args.lock, gpus_needed=args.gpus)
    print(format_report(checks))
    return 1 if failures(checks) else 0

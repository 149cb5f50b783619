"""The Gaussian-mixture benchmark suite: the default 2-D 8-mode world, a 16-D 10-mode world and a biased teacher,
over several seeds. Prints one line per (world, student) with the spread across seeds, and writes every run's
folder under --out.

    .venv/bin/python bench/toy_suite.py --seeds 0 1 2 --jobs 2 --out runs/toy-suite

With ``--jobs N`` the runs go N at a time, one thread each (two multi-threaded torch jobs on two cores thrash).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORLDS = {
    "2d-8modes": ["--dim", "2", "--modes", "8"],
    "16d-10modes": ["--dim", "16", "--modes", "10"],
    "2d-8modes-biased": ["--dim", "2", "--modes", "8", "--bias", "1", "--noise", "fresh"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--worlds", nargs="+", choices=sorted(WORLDS), default=list(WORLDS))
    p.add_argument("--out", type=Path, default=Path("runs/toy-suite"))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each when > 1")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None

    def launch(job: tuple[str, int]) -> tuple[int, float]:
        world, seed = job
        t0 = time.time()
        cmd = [sys.executable, "-m", "sidrepro.cli", "toy", *WORLDS[world], "--seed", str(seed),
               "--out", str(args.out / f"{world}-seed{seed}"), "--quiet", "--check"]
        rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, env=env)
        print(f"{world} seed {seed}: rc {rc}, {time.time() - t0:.0f} s", flush=True)
        return rc, time.time() - t0

    jobs = [(world, seed) for world in args.worlds for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        codes = list(pool.map(launch, jobs))
    rows: dict[tuple[str, str, int], list[float]] = {}
    ok = all(rc == 0 for rc, _ in codes)
    for world, seed in jobs:
        res = json.loads((args.out / f"{world}-seed{seed}" / "result.json").read_text())
        rows.setdefault((world, "floor", 0), []).append(res["floor"]["energy"]["mean"])
        rows.setdefault((world, "teacher", 32), []).append(res["teacher"]["distance"]["energy"]["mean"])
        for s in res["students"]:
            rows.setdefault((world, s["name"], s["steps"]), []).append(s["distance"]["energy"]["mean"])
            rows.setdefault((world, s["name"] + " / teacher", s["steps"]), []).append(s["ratio_to_teacher"])
    print(f"\n{'world':18} {'model':34} {'steps':>5}  energy distance (mean ± std over seeds)")
    for (world, name, steps), vals in rows.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{world:18} {name:34} {steps:>5}  {statistics.mean(vals):.2e} ± {sd:.1e}")
    print(f"wall time {sum(t for _, t in codes):.0f} s of runs, {args.jobs} at a time")
    print("all bounds met" if ok else "SOME BOUND MISSED (see the runs' result.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

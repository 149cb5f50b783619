"""The Gaussian-mixture benchmark suite: the default 2-D 8-mode world, a 16-D 10-mode world and a biased teacher,
over several seeds. Prints one line per (world, student) with the spread across seeds, and writes every run's
folder under --out.

    .venv/bin/python bench/toy_suite.py --seeds 0 1 2 --jobs 2 --out runs/toy-suite

With ``--jobs N`` the runs go N at a time, one thread each (two multi-threaded torch jobs on two cores thrash).
Distances are unbiased energy distances (U-statistics), each the mean over --eval-repeats independent sample sets;
``--rescore`` re-evaluates the networks saved in existing run folders (e.g. with another --eval-seed) instead of
training.
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
    p.add_argument("--eval-samples", type=int, default=100_000, help="samples per set (default 100000)")
    p.add_argument("--eval-repeats", type=int, default=10, help="independent sample sets per model (default 10)")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first evaluation seed (with --rescore)")
    p.add_argument("--rescore", action="store_true", help="re-evaluate saved runs under --out; no training")
    p.add_argument("--summary", action="store_true",
                   help="only print the summary of results already under --out (with --rescore: of re-scorings)")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None

    def launch(job: tuple[str, int]) -> tuple[int, float]:
        world, seed = job
        t0 = time.time()
        cmd = [sys.executable, "-m", "sidrepro.cli", "toy", *WORLDS[world], "--seed", str(seed),
               "--eval-samples", str(args.eval_samples), "--eval-repeats", str(args.eval_repeats),
               "--out", str(args.out / f"{world}-seed{seed}"), "--quiet", "--check"]
        if args.rescore:
            cmd = [sys.executable, "-m", "sidrepro.toy.bench", str(args.out / f"{world}-seed{seed}"),
                   "--eval-samples", str(args.eval_samples), "--eval-repeats", str(args.eval_repeats),
                   "--eval-seed", str(args.eval_seed)]
        rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, env=env)
        print(f"{world} seed {seed}: rc {rc}, {time.time() - t0:.0f} s", flush=True)
        return rc, time.time() - t0

    jobs = [(world, seed) for world in args.worlds for seed in args.seeds]
    codes = [(0, 0.0)] * len(jobs)
    if not args.summary:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(launch, jobs))
    ok = all(rc == 0 for rc, _ in codes)
    name = (f"rescore-n{args.eval_samples}-r{args.eval_repeats}-s{args.eval_seed}.json" if args.rescore
            else "result.json")
    results = {job: json.loads((args.out / f"{job[0]}-seed{job[1]}" / name).read_text()) for job in jobs}
    _print_summary(results)
    if args.summary:  # the verdicts stored in the results
        ok = all(not s["verdict"].startswith("FAIL") for r in results.values() for s in r["students"])
    print(f"wall time {sum(t for _, t in codes):.0f} s of runs, {args.jobs} at a time")
    print("all bounds met" if ok else "SOME BOUND MISSED (see the runs' result.json)")
    return 0 if ok else 1


def _print_summary(results: dict[tuple[str, int], dict]) -> None:
    """Per (world, model): each seed's distance or ratio as mean ± standard error over the evaluation sets, then
    the mean ± std over seeds."""
    rows: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for (world, _), res in results.items():
        def add(key: str, steps: int, mean: float, se: float, world: str = world) -> None:
            rows.setdefault((world, key, steps), []).append((mean, se))

        add("floor", 0, res["floor"]["energy"]["mean"], res["floor"]["energy"].get("se", 0.0))
        add("teacher", 32, res["teacher"]["distance"]["energy"]["mean"],
            res["teacher"]["distance"]["energy"].get("se", 0.0))
        for s in res["students"]:
            add(s["name"], s["steps"], s["distance"]["energy"]["mean"], s["distance"]["energy"].get("se", 0.0))
            add(s["name"] + " / teacher", s["steps"], s["ratio_to_teacher"], s.get("ratio_to_teacher_se", 0.0))
    print(f"\n{'world':18} {'model':34} {'steps':>5}  per seed (mean ± SE over sets) | over seeds (mean ± std)")
    for (world, key, steps), vals in rows.items():
        ratio = key.endswith("/ teacher")
        fmt = (lambda x: f"{x:.2f}") if ratio else (lambda x: f"{x:.2e}")
        per_seed = "  ".join(f"{fmt(m)} ± {fmt(e)}" for m, e in vals)
        means = [m for m, _ in vals]
        sd = statistics.stdev(means) if len(means) > 1 else 0.0
        print(f"{world:18} {key:34} {steps:>5}  {per_seed} | {fmt(statistics.mean(means))} ± {fmt(sd)}")


if __name__ == "__main__":
    sys.exit(main())

"""The Gaussian-mixture benchmark suite: the default 2-D 8-mode world, a 16-D 10-mode world and a biased teacher,
over several seeds. Prints one line per (world, student) with the spread across seeds, and writes every run's
folder under --out.

    .venv/bin/python bench/toy_suite.py --seeds 0 1 2 --out runs/toy-suite
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
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
    args = p.parse_args()
    rows: dict[tuple[str, str, int], list[float]] = {}
    ok = True
    for world in args.worlds:
        for seed in args.seeds:
            out = args.out / f"{world}-seed{seed}"
            t0 = time.time()
            cmd = [sys.executable, "-m", "sidrepro.cli", "toy", *WORLDS[world], "--seed", str(seed),
                   "--out", str(out), "--quiet", "--check"]
            rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
            ok &= rc == 0
            res = json.loads((out / "result.json").read_text())
            print(f"{world} seed {seed}: rc {rc}, {time.time() - t0:.0f} s", flush=True)
            rows.setdefault((world, "floor", 0), []).append(res["floor"]["energy"]["mean"])
            rows.setdefault((world, "teacher", 32), []).append(res["teacher"]["distance"]["energy"]["mean"])
            for s in res["students"]:
                rows.setdefault((world, s["name"], s["steps"]), []).append(s["distance"]["energy"]["mean"])
                rows.setdefault((world, s["name"] + " / teacher", s["steps"]), []).append(s["ratio_to_teacher"])
    print(f"\n{'world':18} {'model':34} {'steps':>5}  energy distance (mean ± std over seeds)")
    for (world, name, steps), vals in rows.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{world:18} {name:34} {steps:>5}  {statistics.mean(vals):.2e} ± {sd:.1e}")
    print("all bounds met" if ok else "SOME BOUND MISSED (see the runs' result.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``sidrepro score | score-weights``: the preference metrics (LAION aesthetic, HPSv2, ImageReward, PickScore) of a
merged sample folder, and each scorer's weights (real ones at pinned hub commits, or tiny random offline ones)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCORER_CHOICES = ("aesthetic", "hpsv2", "image_reward", "pickscore")


def add(sub) -> None:
    """Register the commands on an argparse sub-parser collection."""
    from .teachers import DEFAULT_LOCK

    p = sub.add_parser("score", help="one preference metric of a sample folder (aesthetic, hpsv2, image_reward, "
                                     "pickscore)",
                       description="Score every image of a merged sample folder against its caption and write "
                                   "{metric, <metric>: mean, num_images, reference, versions, code, ...} to OUT "
                                   "atomically. hpsv2 and image_reward run in their own environment (--env).")
    p.add_argument("--scorer", required=True, choices=SCORER_CHOICES)
    p.add_argument("--samples", type=Path, required=True, help="a sample folder with its merged manifest.jsonl")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--weights", type=Path, required=True, help="the folder `sidrepro score-weights` wrote")
    p.add_argument("--env", type=Path, default=None,
                   help="the scorer's environment (hpsv2, image_reward): `sidrepro env --spec "
                        "workflow/envs/NAME.txt --out DIR`")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=32)
    p.set_defaults(func=_score)

    p = sub.add_parser("score-weights", help="a preference scorer's weights: pinned hub files or tiny random ones",
                       description="Fetch a scorer's real weights at the commits pinned in the lock file into OUT "
                                   "(or, with --tiny, write random offline weights of the same model classes) and "
                                   "write OUT/scorer.json last.")
    p.add_argument("--scorer", required=True, choices=SCORER_CHOICES)
    p.add_argument("--out", type=Path, required=True, help="weights folder")
    p.add_argument("--tiny", action="store_true", help="random offline weights (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny weights")
    p.add_argument("--env", type=Path, default=None, help="the scorer's environment (tiny hpsv2, image_reward)")
    p.add_argument("--hps-version", default="v2.1", choices=("v2.0", "v2.1"), help="HPS checkpoint (default v2.1)")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    p.add_argument("--update-lock", action="store_true", help="re-resolve the revision and rewrite the lock entry")
    p.set_defaults(func=_score_weights)


def _score(args: argparse.Namespace) -> int:
    import os

    from ..evaluate.scorers import ScorerError, score_samples

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else None
    try:
        record = score_samples(args.scorer, args.samples, args.out, weights=args.weights, env=args.env,
                               device=args.device, batch=args.batch, threads=threads)
    except ScorerError as err:
        print(f"sidrepro score: {err}", file=sys.stderr)
        return 2
    print(f"{args.scorer}: {record[args.scorer]:.4f} (std {record['std']:.4f}) on {record['num_images']} images "
          f"-> {args.out}")
    return 0


def _score_weights(args: argparse.Namespace) -> int:
    from ..evaluate.scorers import ScorerError, fetch_weights, tiny_weights
    from ..teachers.hub import HubError

    try:
        if args.tiny:
            record = tiny_weights(args.scorer, args.out, env=args.env, seed=args.seed)
        else:
            extra = {"version": args.hps_version} if args.scorer == "hpsv2" else {}
            record = fetch_weights(args.scorer, args.out, lock_file=args.lock, update_lock=args.update_lock, **extra)
    except (ScorerError, HubError) as err:
        print(f"sidrepro score-weights: {err}", file=sys.stderr)
        return 1
    print(f"{args.scorer} weights in {args.out}: {record['reference']}")
    return 0

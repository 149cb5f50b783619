"""The ``sidrepro`` command line. Imports stay inside the commands: torch alone costs seconds to import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import (
    curves,
    data,
    distill,
    envs,
    evaluate,
    geneval,
    plan,
    positive_int,
    scores,
    status,
    tables,
    teachers,
)


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in items if s not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return items
    return parse


def _add_toy(sub) -> None:
    from .toy.world_spec import WorldSpec  # torch-free: the world's defaults live there

    world_defaults = WorldSpec()
    p = sub.add_parser("toy", help="SiD on a Gaussian-mixture world with a known answer",
                       description="Train a flow-matching MLP teacher on a Gaussian mixture, distil it with SiD in "
                                   "both settings and measure every model's distance to the true data.")
    w = p.add_argument_group("world")
    w.add_argument("--dim", type=positive_int, default=world_defaults.dim, help="data dimension (default 2)")
    w.add_argument("--modes", type=positive_int, default=world_defaults.modes, help="mixture components (default 8)")
    w.add_argument("--seed", type=int, default=0, help="picks the world and seeds training (default 0)")
    w.add_argument("--mean-scale", type=float, default=world_defaults.mean_scale, help="spread of the mode means")
    w.add_argument("--min-std", type=float, default=world_defaults.min_std, help="narrowest mode axis (before scaling)")
    w.add_argument("--max-std", type=float, default=world_defaults.max_std, help="widest mode axis (before scaling)")
    w.add_argument("--bias", type=float, default=0.0,
                   help="train the teacher on a misspecified mixture (0 = exact; 1 = strong)")
    w.add_argument("--unconditional", action="store_true", help="distil the null-label (unconditional) model")
    d = p.add_argument_group("distillation")
    d.add_argument("--steps", type=positive_int, default=4, help="generator steps N (default 4)")
    d.add_argument("--settings", type=_csv(("data-free", "data-aided")), default=("data-free", "data-aided"))
    d.add_argument("--noise", type=_csv(("fresh", "fixed", "ddim")), default=("fresh", "fixed", "ddim"))
    d.add_argument("--iters", type=positive_int, default=None,
                   help="iterations per student (default 8000 in 2-D, 4000 above)")
    d.add_argument("--batch", type=positive_int, default=None, help="batch size")
    d.add_argument("--lr", type=float, default=None,
                   help="learning rate of the fake-score network (default 1.5e-4 in 2-D, 6e-4 above)")
    d.add_argument("--glr", type=float, default=None,
                   help="learning rate of the generator (default 7.5e-5 in 2-D, 3e-4 above)")
    d.add_argument("--ema", type=float, default=None,
                   help="EMA decay per iteration of the generator's weights (default 0: none, as the official code)")
    d.add_argument("--guidance", type=float, default=1.0, help="CFG scale for teacher and fake net (default 1)")
    d.add_argument("--teacher-iters", type=positive_int, default=None, help="teacher training iterations")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-samples", type=positive_int, default=None,
                   help="points per evaluation set (default 100,000: the ratio errors near the floor fall like 1/n)")
    e.add_argument("--eval-repeats", type=positive_int, default=None,
                   help="independent evaluation sets, for the standard errors (default 10)")
    p.add_argument("--out", type=Path, default=Path("runs/toy"), help="output folder (default runs/toy)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a student misses its bound")
    p.set_defaults(func=_run_toy)


def _run_toy(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .toy.bench import ToyBenchConfig, all_passed, format_table, run
    from .toy.distill import DistillConfig, dimension_defaults
    from .toy.teacher import TeacherConfig
    from .toy.world_spec import WorldSpec

    given = {"iters": args.iters, "batch": args.batch, "lr": args.lr, "glr": args.glr, "ema": args.ema}
    distill_kw = {**dimension_defaults(args.dim), **{k: v for k, v in given.items() if v is not None}}
    eval_kw = {k: v for k, v in (("eval_samples", args.eval_samples), ("eval_repeats", args.eval_repeats))
               if v is not None}
    teacher = TeacherConfig() if args.teacher_iters is None else replace(TeacherConfig(), iters=args.teacher_iters)
    cfg = ToyBenchConfig(
        world=WorldSpec(dim=args.dim, modes=args.modes, seed=args.seed, mean_scale=args.mean_scale,
                        min_std=args.min_std, max_std=args.max_std), bias=args.bias,
        conditional=not args.unconditional, guidance=args.guidance, settings=args.settings, noises=args.noise,
        num_steps=args.steps, teacher=teacher, distill=DistillConfig(seed=args.seed, **distill_kw),
        **eval_kw,
    )
    result = run(cfg, args.out, progress=not args.quiet)
    print(format_table(result))
    print(f"wrote {args.out / 'result.json'}")
    if not all_passed(result):
        print("some student missed its bound (see the verdict column)")
        return 1 if args.check else 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidrepro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_toy(sub)
    teachers.add(sub)
    data.add(sub)
    distill.add(sub)
    evaluate.add(sub)
    curves.add(sub)
    tables.add(sub)
    envs.add(sub)
    geneval.add(sub)
    scores.add(sub)
    status.add(sub)
    plan.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input that got past argparse: say what, exit cleanly
        print(f"sidrepro {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

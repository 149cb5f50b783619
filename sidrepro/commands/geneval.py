"""``sidrepro geneval prompts | fetch-metadata | fetch-models | tiny | score``: the GenEval benchmark. The detector
runs in its own pinned environment (``sidrepro env --spec workflow/envs/geneval.txt``); these commands run in the
main one and call into it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add(sub) -> None:
    """Register ``sidrepro geneval`` on an argparse sub-parser collection."""
    from ..evaluate.geneval import CLIP_MODEL, CLIP_PRETRAINED, IMAGES_PER_PROMPT, METADATA_URL

    g = sub.add_parser("geneval", help="GenEval: prompts for the sampler, pinned models, scoring in its own env",
                       description="GenEval (553 prompts x 4 images, Mask2Former + CLIP). Sample the caption file "
                                   "of `geneval prompts` with `sidrepro sample --captions`, then `geneval score`.")
    gs = g.add_subparsers(dest="geneval_command", required=True)

    p = gs.add_parser("prompts", help="caption rows (4 images per prompt) for `sidrepro sample --captions`")
    p.add_argument("--metadata", type=Path, required=True, help="evaluation_metadata.jsonl")
    p.add_argument("--out", type=Path, required=True, help="caption file to write (.jsonl)")
    p.add_argument("--images-per-prompt", type=int, default=IMAGES_PER_PROMPT)
    p.set_defaults(func=_prompts)

    p = gs.add_parser("fetch-metadata", help=f"download the benchmark's metadata (pinned, sha256): {METADATA_URL}")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_fetch_metadata)

    p = gs.add_parser("fetch-models", help="download the Mask2Former and CLIP weights for offline scoring")
    p.add_argument("--env", type=Path, required=True, help="the GenEval environment (sidrepro env)")
    p.add_argument("--out", type=Path, required=True, help="models folder (writes models.json last)")
    p.add_argument("--detector-sha256", default=None, help="full sha256 of the detector weights, once known")
    p.add_argument("--clip-model", default=CLIP_MODEL)
    p.add_argument("--clip-pretrained", default=CLIP_PRETRAINED)
    p.set_defaults(func=_fetch_models)

    p = gs.add_parser("tiny", help="tiny random-weight Mask2Former and CLIP of the same classes (tests, smoke)")
    p.add_argument("--env", type=Path, required=True, help="the GenEval environment (sidrepro env)")
    p.add_argument("--out", type=Path, required=True, help="models folder (writes tiny.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--favour", default=None, help="bias the detector towards this COCO class")
    p.set_defaults(func=_tiny)

    p = gs.add_parser("score", help="score a merged sample folder; writes the metrics JSON",
                      description="Convert the sample folder to GenEval's layout, run the detector, CLIP colours "
                                  "and GenEval's rules in the GenEval environment, and write overall and per-task "
                                  "scores with the models' hashes and the environment's versions.")
    p.add_argument("--samples", type=Path, required=True, help="merged sample folder (manifest.jsonl)")
    p.add_argument("--metadata", type=Path, required=True, help="the metadata the captions were made from")
    p.add_argument("--env", type=Path, required=True, help="the GenEval environment (sidrepro env)")
    p.add_argument("--detector", type=Path, required=True, help="models folder (fetch-models or tiny)")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--work", type=Path, default=None, help="layout and per-image results (default beside --out)")
    p.add_argument("--device", default="cpu", help="cpu (default; mmcv ops built for the CPU) or cuda")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="GenEval option (threshold, counting_threshold, max_objects, max_overlap, "
                        "position_threshold, bgcolor, crop)")
    p.add_argument("--images-per-prompt", type=int, default=IMAGES_PER_PROMPT, help="as sampled (default 4)")
    p.add_argument("--partial", action="store_true", help="accept prompts with fewer images than planned")
    p.add_argument("--log", type=Path, default=None, help="append the scorer's output here")
    p.set_defaults(func=_score)


def _prompts(args: argparse.Namespace) -> int:
    from ..evaluate.geneval import caption_rows, load_metadata, write_captions

    metadata = load_metadata(args.metadata)
    rows = caption_rows(metadata, args.images_per_prompt)
    write_captions(rows, args.out)
    print(f"{len(metadata)} prompts x {args.images_per_prompt} images = {len(rows)} caption rows -> {args.out}")
    return 0


def _fetch_metadata(args: argparse.Namespace) -> int:
    from ..evaluate.geneval import fetch_metadata

    print(f"{args.out}: sha256 {fetch_metadata(args.out)}")
    return 0


def _fetch_models(args: argparse.Namespace) -> int:
    from ..evaluate.geneval import fetch_models

    record = fetch_models(args.env, args.out, detector_sha256=args.detector_sha256, clip_model=args.clip_model,
                          clip_pretrained=args.clip_pretrained)
    print(json.dumps(record, indent=2))
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from ..evaluate.geneval import _run_scorer

    cmd = ["tiny", "--out", str(args.out), "--seed", str(args.seed)]
    if args.favour:
        cmd += ["--favour", args.favour]
    print(_run_scorer(args.env, cmd, "building the tiny GenEval models").strip())
    return 0


def _score(args: argparse.Namespace) -> int:
    from ..evaluate.geneval import score

    options = dict(o.split("=", 1) for o in args.option)
    record = score(args.samples, args.metadata, args.env, args.detector, args.out, device=args.device,
                   options=options, work=args.work, require_complete=not args.partial,
                   images_per_prompt=args.images_per_prompt, log_file=args.log)
    tasks = ", ".join(f"{k} {v:.3f}" for k, v in record["per_task"].items())
    print(f"GenEval {record['geneval']:.4f} on {record['num_images']} images ({tasks}) -> {args.out}")
    return 0

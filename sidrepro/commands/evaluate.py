"""``sidrepro coco | sample | evaluate``: the COCO-2014 reference and its caption subsets, sharded sampling of a
student, teacher or baseline, and FID / CLIP score under a named protocol."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser("coco", help="COCO-2014 val reference: 256 px PNGs, captions, subsets, statistics")
    p.add_argument("--coco-dir", type=Path, required=True,
                   help="holds val2014/ and annotations/captions_val2014.json")
    p.add_argument("--out", type=Path, required=True, help="reference folder to write")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--download", action="store_true", help="download missing files from images.cocodataset.org")
    p.add_argument("--workers", type=int, default=0, help="threads for the image conversion")
    p.add_argument("--stats", nargs="*", default=[], metavar="PROTOCOL",
                   help="also compute the reference statistics of these protocols (paper, clean)")
    p.set_defaults(func=_coco)

    p = sub.add_parser("sample", help="one shard of images for a caption subset (resumable)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", type=Path, help="an exported student folder")
    who.add_argument("--teacher", help="a teacher name (its own sampler, table steps and guidance)")
    who.add_argument("--baseline", help="a baseline name (its own pipeline)")
    p.add_argument("--snapshot", type=Path, default=None, help="teacher / baseline base folder")
    p.add_argument("--lora", type=Path, default=None, help="a LoRA baseline's adapter folder")
    p.add_argument("--reference", type=Path, default=None,
                   help="the folder written by `sidrepro coco` (its --subset captions are sampled)")
    p.add_argument("--subset", default="paper10k", help="caption subset (paper10k, clean30k, heldout)")
    p.add_argument("--captions", type=Path, default=None,
                   help="sample these caption rows instead of a COCO subset (JSONL of prompt_id, image_id, "
                        "caption; e.g. `sidrepro geneval prompts`)")
    p.add_argument("--resolution", type=int, default=None,
                   help="generation resolution in px of a teacher or baseline (default: its preset; the workflow "
                        "passes its table block's); a student samples at the resolution it was distilled at")
    p.add_argument("--resolution-out", type=int, default=256,
                   help="saved image size (default 256, the FID/CLIP protocol's)")
    p.add_argument("--out", type=Path, required=True, help="sample folder (shared by all shards)")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="stop after this many new images")
    p.add_argument("--on-plan-change", choices=("error", "restart"), default="error",
                   help="OUT holds samples of another model or plan: refuse (default), or move them to "
                        ".superseded/ beside OUT and start afresh (the workflow, after a model was retrained)")
    p.add_argument("--on-stop", choices=("exit", "requeue"), default="exit",
                   help="when the job's time limit is near (or on SIGTERM/SIGUSR1, or a STOP file in --out), stop "
                        "between batches and exit with status 75 (run again to finish the shard); `requeue` also "
                        "requeues the SLURM job so that it finishes by itself (the workflow)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("evaluate", help="FID and CLIP score of a sample folder under a named protocol")
    p.add_argument("--samples", type=Path, required=True, help="a complete folder from `sidrepro sample`")
    p.add_argument("--reference", type=Path, required=True, help="the folder written by `sidrepro coco`")
    p.add_argument("--protocol", default="paper", help="paper or clean (see eval_protocol in the README)")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--clip-model", default=None, help="override the protocol's CLIP model name (tests)")
    p.add_argument("--clip-weights", default=None, help="override its pretrained tag or a local weights file")
    p.add_argument("--partial", action="store_true", help="accept fewer images than the protocol's count")
    p.set_defaults(func=_evaluate)


def _coco(args: argparse.Namespace) -> int:
    from ..evaluate.reference import prepare_coco

    ref = prepare_coco(args.coco_dir, args.out, resolution=args.resolution, download=args.download,
                       workers=args.workers)
    manifest = ref.load_manifest()
    print(f"{manifest['num_images']} reference images in {ref.images_dir}; subsets: "
          + ", ".join(f"{k} ({v})" for k, v in ref.subsets.items()))
    for name in args.stats:
        from ..evaluate.metrics import reference_stats_for

        print(f"{name} statistics: {reference_stats_for(ref, name)}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.reference import CocoReference
    from ..evaluate.sampling import ModelSpec, merge_manifests, sample_shard
    from ..stopping import EXIT_CONTINUE, Stopper, requeue_slurm_job
    from ..teachers.registry import get_baseline
    from .distill import teacher_folder

    if args.student is not None:
        spec = ModelSpec.student(args.student, steps=args.steps, resolution=args.resolution)
    elif args.teacher is not None:
        spec = ModelSpec.teacher(args.teacher, teacher_folder(args.teacher, args.snapshot), steps=args.steps,
                                 guidance=args.guidance, resolution=args.resolution)
    else:
        entry = get_baseline(args.baseline)
        if args.snapshot is None:
            raise ValueError(f"--snapshot: the base model folder of {entry.name!r} ({entry.hub_id})")
        spec = ModelSpec.baseline(args.baseline, args.snapshot, args.lora, steps=args.steps, guidance=args.guidance,
                                  resolution=args.resolution)
    if (args.reference is None) == (args.captions is None):
        raise ValueError("give either --reference (a COCO caption subset) or --captions (a caption file)")
    if args.captions is not None:
        from ..evaluate.geneval import read_captions

        captions = read_captions(args.captions)
    else:
        captions = CocoReference.open(args.reference).load_subset(args.subset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    stopper = Stopper(args.out, checkpoint_bytes=0)
    reason = ""

    def should_stop(batch_seconds: float) -> str:
        nonlocal reason
        stopper.observe_iteration(batch_seconds)
        reason = stopper.reason()
        return reason

    manifest = sample_shard(spec, captions, args.out, shard=args.shard, num_shards=args.num_shards, seed=args.seed,
                            batch=args.batch, device=device, dtype=dtype, progress=not args.quiet, limit=args.limit,
                            resolution_out=args.resolution_out, on_plan_change=args.on_plan_change,
                            should_stop=should_stop)
    if reason:
        print(f"shard {args.shard} of {args.num_shards}: stopped ({reason}); the same command finishes it",
              flush=True)
        if args.on_stop == "requeue":
            requeue_slurm_job()
        return EXIT_CONTINUE
    print(f"shard {args.shard} of {args.num_shards}: {manifest}")
    if args.num_shards == 1 and args.limit is None:
        print(f"all images: {merge_manifests(args.out)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.metrics import evaluate_samples

    clip = None
    if args.clip_model or args.clip_weights:
        if not (args.clip_model and args.clip_weights):
            raise ValueError("--clip-model and --clip-weights go together")
        clip = (args.clip_model, args.clip_weights)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = evaluate_samples(args.samples, args.reference, args.protocol, args.out, clip=clip, device=device,
                              require_complete=not args.partial)
    print(f"{args.protocol}: FID {record['fid']:.3f}, CLIP {record['clip_score']:.4f} on {record['num_images']} images"
          f" -> {args.out}")
    return 0

"""``sidrepro fetch-dataset | prompts | fetch-clip | fetch-coco``: the pinned image-text dataset snapshot, the
data-free prompt file made from its captions, the CLIP metric weights in a local cache and the COCO-2014 val
download, so that compute nodes without network find everything on disk.

The names follow the existing commands: ``fetch`` fetches models by registry name, ``fetch-dataset`` a dataset repo
by hub id, ``fetch-clip`` the CLIP weights of an evaluation protocol, ``fetch-coco`` the COCO-2014 val images and
captions; ``prompts`` writes a prompt file, as ``coco`` writes the reference. Heavy imports stay inside the
commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .teachers import DEFAULT_LOCK


def add(sub) -> None:
    """Register the data commands on an argparse sub-parser collection."""
    from ..data import CAPTION_COLUMN, DEFAULT_DATASET, DEFAULT_FILES, IMAGE_COLUMN

    p = sub.add_parser("fetch-dataset", help="download a pinned snapshot of an image-text dataset repo (parquet)",
                       description="Download the dataset's parquet shards at the commit recorded in the lock file "
                                   "(the first fetch records it) and check their columns. The token comes from "
                                   "HF_TOKEN or `hf auth login`.")
    p.add_argument("repo", nargs="?", default=DEFAULT_DATASET, help=f"dataset repo id (default {DEFAULT_DATASET})")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default main; pinned by the lock)")
    p.add_argument("--out", type=Path, required=True, help="snapshot folder to write")
    p.add_argument("--files", default=DEFAULT_FILES, help=f"glob of the shard files (default {DEFAULT_FILES})")
    p.add_argument("--caption-column", default=CAPTION_COLUMN, help=f"default {CAPTION_COLUMN}")
    p.add_argument("--image-column", default=IMAGE_COLUMN, help=f"default {IMAGE_COLUMN}; '' for captions only")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    p.add_argument("--update-lock", action="store_true", help="re-resolve the revision and rewrite the lock entry")
    p.add_argument("--stamp", type=Path, default=None, help="also write repo, commit and shard count here (JSON)")
    p.set_defaults(func=_fetch_dataset)

    p = sub.add_parser("prompts", help="the data-free prompt file from the captions of parquet shards",
                       description="Write one prompt per line from the shards' caption column: whitespace "
                                   "collapsed, each distinct caption once, evaluation (COCO) captions dropped and "
                                   "counted (or refused). Written atomically.")
    p.add_argument("--shards", type=Path, required=True, help="folder of train_*.parquet shards (or one file)")
    p.add_argument("--out", type=Path, required=True, help="prompt file to write (.txt)")
    p.add_argument("--caption-column", default=CAPTION_COLUMN, help=f"default {CAPTION_COLUMN}")
    p.add_argument("--exclude", type=Path, default=None,
                   help="evaluation captions to keep out, one per line (the COCO reference's captions.txt)")
    p.add_argument("--on-overlap", choices=("drop", "refuse"), default="drop",
                   help="drop evaluation captions and count them (default), or refuse the whole file")
    p.set_defaults(func=_prompts)

    p = sub.add_parser("fetch-clip", help="download a protocol's CLIP weights into a local hub cache folder",
                       description="Fetch the open_clip weights of an evaluation protocol (or --model/--pretrained) "
                                   "at the commit pinned in the lock file into CACHE, where `sidrepro evaluate` "
                                   "finds them with SIDREPRO_CLIP_CACHE=CACHE and no network.")
    p.add_argument("--protocol", default="paper", help="paper or clean (default paper)")
    p.add_argument("--model", default=None, help="open_clip model name (default: the protocol's)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (default: the protocol's)")
    p.add_argument("--cache", type=Path, required=True, help="hub cache folder (set SIDREPRO_CLIP_CACHE to it)")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    p.add_argument("--update-lock", action="store_true", help="re-resolve the revision and rewrite the lock entry")
    p.add_argument("--stamp", type=Path, default=None, help="also write model, tag, commit and file here (JSON)")
    p.set_defaults(func=_fetch_clip)

    p = sub.add_parser("fetch-coco", help="download COCO-2014 val (images, captions) for `sidrepro coco`, nothing else",
                       description="Download what is missing of the official COCO-2014 val layout (val2014/*.jpg, "
                                   "annotations/captions_val2014.json) from images.cocodataset.org into COCO_DIR and "
                                   "check that images and captions match. `sidrepro coco --coco-dir COCO_DIR` then "
                                   "prepares the reference with no network.")
    p.add_argument("--coco-dir", type=Path, required=True, help="folder to fill (val2014/ and annotations/)")
    p.add_argument("--stamp", type=Path, default=None,
                   help="also write the folder, the counts and the captions json's sha256 here (JSON)")
    p.set_defaults(func=_fetch_coco)


def _fetch_dataset(args: argparse.Namespace) -> int:
    from ..data.dataset import fetch_dataset
    from ..teachers.hub import HubError

    if args.stamp is not None:
        args.stamp.unlink(missing_ok=True)  # a failed fetch must not leave the previous stamp looking current
    try:
        data = fetch_dataset(args.repo, args.revision, args.out, files=args.files,
                             caption_column=args.caption_column, image_column=args.image_column or None,
                             lock_file=args.lock, update_lock=args.update_lock, stamp=args.stamp)
    except HubError as err:
        print(f"{args.repo}: {err}")
        return 1
    print(f"{args.repo}@{data.snapshot.commit[:12]}: {len(data.shards)} shards in {data.shards_dir}")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from ..data.captions import extract_prompts

    stats = extract_prompts(args.shards, args.out, caption_column=args.caption_column, exclude=args.exclude,
                            on_overlap=args.on_overlap)
    print(stats.summary())
    if stats.overlap_examples:
        print("dropped evaluation captions, e.g.: " + "; ".join(map(repr, stats.overlap_examples)))
    print(f"wrote {args.out}")
    return 0


def _fetch_clip(args: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic
    from ..data.clip_weights import fetch_clip_weights
    from ..evaluate.protocols import get_protocol
    from ..teachers.hub import HubError

    protocol = get_protocol(args.protocol)
    model, pretrained = args.model or protocol.clip_model, args.pretrained or protocol.clip_pretrained
    if args.stamp is not None:
        args.stamp.unlink(missing_ok=True)
    try:
        info = fetch_clip_weights(model, pretrained, args.cache, lock_file=args.lock, update_lock=args.update_lock)
    except HubError as err:
        print(f"{model}/{pretrained}: {err}")
        return 1
    if args.stamp is not None:
        args.stamp.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.stamp, {**info, "protocol": args.protocol})
    print(json.dumps(info))
    print(f"evaluate offline with SIDREPRO_CLIP_CACHE={args.cache}")
    return 0


def _fetch_coco(args: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic
    from ..evaluate.reference import CocoDownloadError, download_coco

    if args.stamp is not None:
        args.stamp.unlink(missing_ok=True)  # a failed download must not leave the previous stamp looking current
    try:
        info = download_coco(args.coco_dir)
    except CocoDownloadError as err:
        print(f"COCO-2014 val: {err}")
        return 1
    if args.stamp is not None:
        args.stamp.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.stamp, info)
    print(f"{info['num_images']} COCO-2014 val images and {info['num_annotations']} captions in {args.coco_dir}")
    return 0

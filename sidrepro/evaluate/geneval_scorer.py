"""GenEval's image scorer, run as a script by the separate GenEval environment's interpreter (workflow/envs/
geneval.txt: Python 3.9, torch 1.12, mmcv-full 1.7, mmdet 2.27, open_clip 2.20), never imported by that environment
as part of ``sidrepro``: it imports only the standard library and numpy at module level, and mmdet / torch / open_clip
inside the functions that need them, so the rule logic below is also importable (and tested) in the main environment.

    python geneval_scorer.py score IMAGEDIR --outfile results.jsonl --detector-config CFG --detector-weights PTH
           [--clip-model ViT-L-14 --clip-pretrained openai --clip-cache DIR] [--device cpu] [--info info.json]
    python geneval_scorer.py fetch-clip --clip-model ViT-L-14 --clip-pretrained openai --clip-cache DIR
    python geneval_scorer.py tiny --out DIR [--seed 0] [--favour CLASS]

IMAGEDIR has GenEval's layout (``NNNNN/metadata.jsonl`` holding that prompt's metadata line, ``NNNNN/samples/
NNNN.png``), so the official ``evaluation/evaluate_images.py`` reads the same folder. Each output line is one image:
``filename, tag, prompt, correct, reason, metadata, details`` as in the official results file.

The rules are GenEval's (djghosh13/geneval, evaluation/evaluate_images.py), reimplemented:
- Detections of class c: score > 0.3 (0.9 for the counting task), the 16 most confident, no extra NMS.
- ``include`` clauses are ANDed: at least ``count`` objects of the class (the ``count`` most confident are kept);
  with ``color``, at least ``count`` of those whose masked crop CLIP classifies as that colour (10 colours, three
  templates, zero-shot); with ``position: [relation, k]``, every kept object must stand in that relation to every
  object kept for clause k (centres offset beyond 0.1 x the summed box sizes, direction within 60 degrees).
- ``exclude`` clauses are ORed: fewer than ``count`` detections of the class.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time

import numpy as np

# The detector's 80 COCO classes in its output order, named as GenEval's object_names.txt names them.
CLASSNAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
COLOR_TEMPLATES = ["a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object"]
OPTIONS = {  # GenEval's defaults (its --options keys)
    "threshold": 0.3, "counting_threshold": 0.9, "max_objects": 16, "max_overlap": 1.0, "position_threshold": 0.1,
    "bgcolor": "#999", "crop": True,
}
DETECTOR_CONFIG = "mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"  # under mmdet's .mim/configs
_IMAGE = re.compile(r"^\d+\.png$")


# --- GenEval's rules (numpy only) ----------------------------------------------------------------------------------

def box_iou(a, b) -> float:
    """Intersection over union of two ``x0, y0, x1, y1`` boxes with GenEval's inclusive-pixel (+1) areas."""
    def area(x0, y0, x1, y1):
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)
    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0


def relative_position(box_a, box_b, threshold: float = OPTIONS["position_threshold"]) -> set:
    """Where box A lies relative to box B: a subset of {left of, right of, above, below}. The centre offset is
    shrunk by ``threshold`` x the two boxes' summed width (height) per axis; a relation holds when the shrunk offset
    along it is more than half the offset's length (image y grows downwards)."""
    a = np.asarray(box_a[:4], dtype=np.float64)
    b = np.asarray(box_b[:4], dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    size = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    shrunk = np.maximum(np.abs(offset) - threshold * size, 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def select_objects(bboxes, masks, tag: str, options: dict | None = None, classnames=CLASSNAMES) -> dict:
    """The detections GenEval keeps per class name: ``bboxes[c]`` is an ``(n, 5)`` array (x0, y0, x1, y1, score) of
    class c, ``masks[c]`` its n masks or None. Score above the threshold (the counting threshold for the counting
    task), most confident first, at most ``max_objects``, then greedy suppression at IoU ``max_overlap`` (1: none).
    Returns ``{classname: [(box, mask), ...]}`` without empty classes."""
    opt = {**OPTIONS, **(options or {})}
    thr = float(opt["counting_threshold"] if tag == "counting" else opt["threshold"])
    max_overlap = float(opt["max_overlap"])
    found = {}
    for c, name in enumerate(classnames):
        det = np.asarray(bboxes[c]).reshape(-1, 5)
        order = np.argsort(det[:, 4])[::-1]  # numpy's default sort, as GenEval: ties keep its order
        order = [int(i) for i in order if det[i, 4] > thr][:int(opt["max_objects"])]
        kept = []
        while order:
            best = order.pop(0)
            kept.append((det[best], None if masks is None else masks[c][best]))
            if max_overlap != 1:
                order = [i for i in order if box_iou(det[best], det[i]) < max_overlap]
        if kept:
            found[name] = kept
    return found


def judge(objects: dict, metadata: dict, colours_of, options: dict | None = None) -> tuple:
    """GenEval's verdict on one image: ``(correct, reason)``. ``objects`` is ``select_objects``'s output;
    ``colours_of(classname, objects)`` returns the colour name of each object (CLIP on its masked crop)."""
    opt = {**OPTIONS, **(options or {})}
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = objects.get(name, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colours = colours_of(name, found)
                hits = colours.count(req["color"])
                if hits < count:
                    ok = False
                    seen = ", ".join(f"{colours.count(c)} {c}" for c in COLORS if c in colours)
                    reasons.append(f"expected {req['color']} {name}>={count}, found {hits} {req['color']}; and {seen}")
            if ok and "position" in req:
                relation, target = req["position"]
                if groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for other in groups[target]:
                            actual = relative_position(obj[0], other[0], float(opt["position_threshold"]))
                            if relation not in actual:
                                ok = False
                                reasons.append(f"expected {name} {relation} target, found {' and '.join(actual)} "
                                               "target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, "\n".join(reasons)


def image_jobs(imagedir: str) -> list:
    """``(path, metadata)`` of every image of a GenEval-layout folder, in folder and file order."""
    jobs = []
    for sub in sorted(os.listdir(imagedir)):
        folder = os.path.join(imagedir, sub)
        if not (sub.isdigit() and os.path.isdir(folder)):
            continue
        with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as fh:
            metadata = json.loads(fh.read())
        samples = os.path.join(folder, "samples")
        for name in sorted(os.listdir(samples)):
            if _IMAGE.match(name) and os.path.isfile(os.path.join(samples, name)):
                jobs.append((os.path.join(samples, name), metadata))
    return jobs


# --- models (the GenEval environment) ------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_detector_config() -> str:
    """The Mask2Former Swin-S COCO instance config shipped inside the mmdet package (``mmdet/.mim/configs``)."""
    import mmdet

    root = os.path.dirname(mmdet.__file__)
    for base in (os.path.join(root, ".mim", "configs"), os.path.join(root, "..", "configs")):
        path = os.path.join(base, DETECTOR_CONFIG)
        if os.path.exists(path):
            return os.path.normpath(path)
    raise FileNotFoundError(f"{DETECTOR_CONFIG} not found in the mmdet package at {root}")


def load_clip(model: str, pretrained: str, cache: str | None, device: str):
    """open_clip model, its evaluation transform and tokenizer. ``model`` may be a config JSON file (registered
    under its stem, e.g. the tiny test model); ``pretrained`` a tag or a weights file."""
    import open_clip

    if model.endswith(".json"):
        open_clip.add_model_config(model)
        model = os.path.splitext(os.path.basename(model))[0]
    net, _, transform = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device,
                                                              cache_dir=cache)
    return net.eval(), transform, open_clip.get_tokenizer(model)


class ColourClassifier:
    """GenEval's colour check: zero-shot CLIP over the 10 colours with three templates per object class (text
    embeddings normalised, averaged over templates, renormalised), on each object's crop with everything outside its
    mask painted ``bgcolor``; the colour of the largest logit wins."""

    def __init__(self, net, transform, tokenizer, device: str, options: dict | None = None):
        self.net, self.transform, self.tokenizer, self.device = net, transform, tokenizer, device
        self.options = {**OPTIONS, **(options or {})}
        self._weights = {}

    def weights(self, classname: str):
        import torch
        import torch.nn.functional as F

        if classname not in self._weights:
            rows = []
            with torch.no_grad():
                for colour in COLORS:
                    texts = [t.format(c=colour, classname=classname) for t in COLOR_TEMPLATES]
                    emb = F.normalize(self.net.encode_text(self.tokenizer(texts).to(self.device)), dim=-1).mean(0)
                    rows.append(emb / emb.norm())
            self._weights[classname] = torch.stack(rows, dim=1)
        return self._weights[classname]

    def crops(self, image, objects) -> list:
        from PIL import Image

        image = image.convert("RGB")
        bg = self.options["bgcolor"]
        blank = image.copy() if bg == "original" else Image.new("RGB", image.size, color=bg)
        out = []
        for box, mask in objects:
            im = image
            if mask is not None:
                if tuple(image.size[::-1]) != tuple(np.shape(mask)):
                    raise ValueError(f"mask {np.shape(mask)} does not fit image {image.size[::-1]}")
                im = Image.composite(image, blank, Image.fromarray(np.asarray(mask)))
            if str(self.options["crop"]) not in ("0", "False", "false"):
                im = im.crop(tuple(float(v) for v in box[:4]))
            out.append(im)
        return out

    def __call__(self, image, classname: str, objects) -> list:
        import torch
        import torch.nn.functional as F

        weights = self.weights(classname)
        batch = torch.stack([self.transform(c) for c in self.crops(image, objects)]).to(self.device)
        with torch.no_grad():
            logits = 100.0 * F.normalize(self.net.encode_image(batch), dim=-1) @ weights
        return [COLORS[int(i)] for i in logits.argmax(1)]


def detect(detector, path: str):
    """Per-class boxes and masks of one image from an mmdet 2.x detector (Mask2Former returns both)."""
    from mmdet.apis import inference_detector

    result = inference_detector(detector, path)
    if isinstance(result, tuple):
        return result[0], (result[1] if len(result) > 1 else None)
    return result, None


def versions(device: str) -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "device": device}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("mmcv", "mmcv-full"), ("mmdet", "mmdet"),
                      ("open_clip", "open-clip-torch"), ("numpy", "numpy"), ("pillow", "Pillow")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def score(args) -> int:
    import torch
    from mmdet.apis import init_detector
    from PIL import Image, ImageOps

    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    options = dict(OPTIONS)
    for item in args.option:
        key, _, value = item.partition("=")
        if key not in OPTIONS:
            raise SystemExit(f"unknown option {key!r}; choose from {', '.join(OPTIONS)}")
        options[key] = value if isinstance(OPTIONS[key], str) else type(OPTIONS[key])(value)
    config = args.detector_config or default_detector_config()
    start = time.time()
    detector = init_detector(config, args.detector_weights, device=args.device)
    net, transform, tokenizer = load_clip(args.clip_model, args.clip_pretrained, args.clip_cache, args.device)
    colours = ColourClassifier(net, transform, tokenizer, args.device, options)
    jobs = image_jobs(args.imagedir)
    if not jobs:
        raise SystemExit(f"no images in GenEval layout under {args.imagedir}")
    tmp = args.outfile + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for n, (path, metadata) in enumerate(jobs):
            bboxes, masks = detect(detector, path)
            image = ImageOps.exif_transpose(Image.open(path))
            objects = select_objects(bboxes, masks, metadata["tag"], options)
            correct, reason = judge(objects, metadata, lambda name, objs, im=image: colours(im, name, objs), options)
            row = {"filename": path, "tag": metadata["tag"], "prompt": metadata["prompt"], "correct": bool(correct),
                   "reason": reason, "metadata": json.dumps(metadata),
                   "details": json.dumps({k: [np.asarray(b).tolist() for b, _ in v] for k, v in objects.items()})}
            out.write(json.dumps(row) + "\n")
            if args.progress and (n + 1) % args.progress == 0:
                print(f"{n + 1}/{len(jobs)} images, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    os.replace(tmp, args.outfile)
    if args.info:
        clip_file = args.clip_pretrained if os.path.isfile(args.clip_pretrained) else None
        info = {"versions": versions(args.device), "options": options, "num_images": len(jobs),
                "seconds": round(time.time() - start, 1),
                "detector": {"config": DETECTOR_CONFIG if args.detector_config is None else config,
                             "config_sha256": sha256_file(config), "weights": os.path.basename(args.detector_weights),
                             "weights_sha256": sha256_file(args.detector_weights)},
                "clip": {"model": args.clip_model, "pretrained": os.path.basename(args.clip_pretrained),
                         **({"weights_sha256": sha256_file(clip_file)} if clip_file else {})}}
        with open(args.info + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
        os.replace(args.info + ".tmp", args.info)
    return 0


def fetch_clip(args) -> int:
    """Download the CLIP weights into ``--clip-cache`` (open_clip checks the file's published sha256)."""
    load_clip(args.clip_model, args.clip_pretrained, args.clip_cache, "cpu")
    files = []
    for root, _, names in os.walk(args.clip_cache):
        files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    print(json.dumps({"model": args.clip_model, "pretrained": args.clip_pretrained,
                      "files": {os.path.relpath(f, args.clip_cache): sha256_file(f) for f in sorted(files)}}))
    return 0


# --- tiny random-weight models of the same classes (tests, smoke) ---------------------------------------------------

def tiny(args) -> int:
    """A Mask2Former (Swin backbone, MSDeformAttn pixel decoder, masked-attention decoder) and an open_clip ViT/text
    transformer, both tiny and randomly initialised from ``--seed``. With ``--favour CLASS`` the detector's class
    head is biased towards that class, so its detections pass GenEval's thresholds (scores are still random)."""
    import mmcv
    import open_clip
    import torch
    from mmdet.apis import init_detector

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    cfg = mmcv.Config.fromfile(default_detector_config())
    m = cfg.model
    m.backbone.update(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, init_cfg=None)
    head = m.panoptic_head
    head.update(in_channels=[16, 32, 64, 128], feat_channels=32, out_channels=32, num_queries=12)
    enc = head.pixel_decoder.encoder
    enc.num_layers = 1
    enc.transformerlayers.attn_cfgs.update(embed_dims=32, num_heads=2)
    enc.transformerlayers.ffn_cfgs.update(embed_dims=32, feedforward_channels=64)
    head.pixel_decoder.positional_encoding.num_feats = 16
    head.positional_encoding.num_feats = 16
    dec = head.transformer_decoder
    dec.num_layers = 1
    dec.transformerlayers.attn_cfgs.update(embed_dims=32, num_heads=2)
    dec.transformerlayers.ffn_cfgs.update(embed_dims=32, feedforward_channels=64)
    dec.transformerlayers.feedforward_channels = 64
    m.test_cfg.max_per_image = 20
    for pipe in (cfg.data.test.pipeline, cfg.data.val.pipeline):
        for step in pipe:
            if step["type"] == "MultiScaleFlipAug":
                step["img_scale"] = (64, 64)
    config = os.path.join(args.out, "tiny_mask2former.py")
    cfg.dump(config)
    detector = init_detector(config, None, device="cpu")
    if args.favour:
        c = CLASSNAMES.index(args.favour)
        cls = detector.panoptic_head.cls_embed
        with torch.no_grad():
            cls.weight.mul_(0.01)
            cls.bias.zero_()
            cls.bias[c] = 8.0
    weights = os.path.join(args.out, "tiny_mask2former.pth")
    torch.save({"meta": {"CLASSES": tuple(CLASSNAMES), "seed": args.seed}, "state_dict": detector.state_dict()},
               weights)
    clip_cfg = {"embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    clip_json = os.path.join(args.out, "sidrepro-tiny-geneval-clip.json")
    with open(clip_json, "w", encoding="utf-8") as fh:
        json.dump(clip_cfg, fh)
    open_clip.add_model_config(clip_json)
    net = open_clip.create_model("sidrepro-tiny-geneval-clip")
    clip_weights = os.path.join(args.out, "sidrepro-tiny-geneval-clip.pt")
    torch.save(net.state_dict(), clip_weights)
    # File names relative to the folder (it may move).
    manifest = {"detector_config": os.path.basename(config), "detector_weights": os.path.basename(weights),
                "clip_model": os.path.basename(clip_json), "clip_pretrained": os.path.basename(clip_weights),
                "seed": args.seed, "favour": args.favour}
    with open(os.path.join(args.out, "tiny.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
    print(json.dumps(manifest))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="geneval_scorer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("imagedir")
    s.add_argument("--outfile", required=True)
    s.add_argument("--detector-config", default=None, help="default: mmdet's Mask2Former Swin-S COCO config")
    s.add_argument("--detector-weights", required=True)
    s.add_argument("--clip-model", default="ViT-L-14")
    s.add_argument("--clip-pretrained", default="openai")
    s.add_argument("--clip-cache", default=None)
    s.add_argument("--device", default="cpu")
    s.add_argument("--option", action="append", default=[], help="KEY=VALUE, GenEval's --options")
    s.add_argument("--info", default=None, help="write versions, options and model hashes here")
    s.add_argument("--progress", type=int, default=0, help="report every N images on stderr")
    s.set_defaults(func=score)
    f = sub.add_parser("fetch-clip")
    f.add_argument("--clip-model", default="ViT-L-14")
    f.add_argument("--clip-pretrained", default="openai")
    f.add_argument("--clip-cache", required=True)
    f.set_defaults(func=fetch_clip)
    t = sub.add_parser("tiny")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--favour", default=None, choices=CLASSNAMES)
    t.set_defaults(func=tiny)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

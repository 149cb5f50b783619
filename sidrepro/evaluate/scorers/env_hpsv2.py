"""HPSv2 runner, executed by the python of the hpsv2 environment (workflow/envs/hpsv2.txt), never imported by
sidrepro: it imports only the standard library, torch, PIL and the ``hpsv2`` package (installed as ``hpsv2x``, the
same code as ``hpsv2`` 1.2.0 plus the BPE vocabulary file that the ``hpsv2`` wheel lacks).

    python -I env_hpsv2.py score REQUEST.json ANSWER.json
    python -I env_hpsv2.py tiny REQUEST.json ANSWER.json

``score`` builds the model as ``hpsv2.img_score.initialize_model`` does (``create_model_and_transforms`` of the
package's own open_clip copy, ``precision='amp'``, ``output_dict=True``) but with ``pretrained=None``: the reference
first loads the LAION ViT-H-14 weights and then overwrites every tensor with the HPS checkpoint
(``load_state_dict``, strict), so the result is the same without that 4 GB download. Then per image, as
``hpsv2.img_score.score``: ``preprocess_val`` (ToTensor, bicubic resize of the short side to 224, centre crop,
OpenAI mean/std), the package tokenizer on the caption, the forward pass under CUDA autocast on a GPU, and the
diagonal of ``image_features @ text_features.T`` (both L2-normalised by the model): a raw cosine, about 0.3.
Images are batched; the batch only changes float rounding.

``tiny`` writes a random model of the same classes under a registered tiny config (2 layers, the real 49408-token
vocabulary so that the package tokenizer applies) as ``{"state_dict": ...}``, the HPS checkpoint layout.
"""

import json
import sys
from pathlib import Path

TINY_NAME = "sidrepro-tiny-hps"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PACKAGES = ("hpsv2x", "torch", "torchvision", "timm", "transformers", "protobuf", "pillow", "numpy")


def _versions():
    from importlib import metadata

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build(model_name, config_file=None, device="cpu"):
    """The model, its eval transform and tokenizer, exactly as ``initialize_model`` builds them (no pretrained)."""
    from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    from hpsv2.src.open_clip.factory import add_model_config, get_model_config

    if config_file and get_model_config(model_name) is None:
        add_model_config(config_file)
    model, _, preprocess_val = create_model_and_transforms(
        model_name, None, precision="amp", device=device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    return model, preprocess_val, get_tokenizer(model_name)


def load_checkpoint(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a checkpoint holding more than tensors; the file is pinned by hub commit and sha256
        return torch.load(path, map_location="cpu", weights_only=False)


def score(req):
    import torch
    from PIL import Image

    device = req.get("device", "cpu")
    model, preprocess_val, tokenizer = build(req["model_name"], req.get("config"), device)
    checkpoint = load_checkpoint(req["checkpoint"])
    model.load_state_dict(checkpoint["state_dict"])
    model = model.to(device).eval()
    items, batch, scores = req["items"], int(req.get("batch", 32)), []
    cuda = str(device).startswith("cuda")
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        with torch.no_grad():
            images = torch.stack([preprocess_val(Image.open(it["file"])) for it in chunk]).to(device)
            text = tokenizer([it["caption"] for it in chunk]).to(device)
            with torch.autocast("cuda", enabled=cuda):
                out = model(images, text)
                rows = (out["image_features"] * out["text_features"]).sum(-1)
        scores += rows.float().cpu().double().tolist()
    return {"scores": scores, "versions": _versions(), "precision": "amp (CUDA autocast fp16)" if cuda else "fp32"}


def tiny(req):
    import torch

    out = Path(req["out"])
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    torch.manual_seed(int(req.get("seed", 0)))
    model, _, _ = build(TINY_NAME, str(config))
    checkpoint = out / f"{TINY_NAME}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return {"model_name": TINY_NAME, "config": str(config), "checkpoint": str(checkpoint), "versions": _versions()}


def main(argv):
    command, request, answer = argv
    req = json.loads(Path(request).read_text(encoding="utf-8"))
    result = {"score": score, "tiny": tiny, "versions": lambda _: {"versions": _versions()}}[command](req)
    Path(answer).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""CLIP score as the SiD family measures it (eval_protocol.md; the official ``networks/clip.py``).

Per image: the stored ``uint8`` image (256 px under our protocols) / 255, **bicubic resize to the model's input size
(224) without crop or antialias** (``F.interpolate(..., mode="bicubic", align_corners=False)``, no clamp), OpenAI CLIP
mean/std; the caption through the model's open_clip tokenizer (77 tokens, truncated with EOT). The score is the
cosine similarity of the L2-normalised image and text embeddings, **raw** (about 0.30-0.35 for ViT-g-14 on COCO, not
x100 and not clamped at 0), averaged over all images (the official code averages rank 0's share only).

Weights. Named tags (``ViT-g-14`` / ``laion2b_s12b_b42k`` for the paper protocol, ``laion2b_s34b_b88k`` for the clean
one) live on the Hugging Face Hub. ``load_clip`` looks for them in the local hub cache first and, unless
``download=True``, never touches the network: an offline compute node gets a clear error with the pre-download
command instead of open_clip's minute of retries. ``tiny_clip_checkpoint`` makes a random 2-layer model registered
under its own config name, saved as a local weights file: tests run the same ``load_clip`` / ``clip_score`` path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # = open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP = "sidrepro-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

Tokenizer = Callable[[Sequence[str]], Tensor]


class ClipWeightsNotFound(FileNotFoundError):
    """The named open_clip weights are not in the local cache and downloading was not allowed."""


def clip_cache_dir() -> Path | None:
    """``$SIDREPRO_CLIP_CACHE`` when set (a Hugging Face hub cache folder), else None: the default hub cache."""
    env = os.environ.get("SIDREPRO_CLIP_CACHE")
    return Path(env).expanduser() if env else None


def _hub_cache_description(cache_dir: Path | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return f"{constants.HF_HUB_CACHE} (the Hugging Face hub cache: $HF_HUB_CACHE, or $HF_HOME/hub)"


def hub_weight_names(hf_hub: str) -> tuple[str, list[str]]:
    """An open_clip ``hf_hub`` entry ("org/model/" or "org/model/file") as (repo, file names in open_clip's order of
    preference: the safetensors twin first, then the named file; as ``download_pretrained_from_hf``)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def cached_weights(name: str, pretrained: str, cache_dir: Path | None = None) -> Path | None:
    """Local file of open_clip's weights for ``name`` / ``pretrained`` tag, found without any network call."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        return None
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, names = hub_weight_names(cfg["hf_hub"])
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        return None
    if cfg.get("url"):
        path = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"])
        return path if path.is_file() else None
    return None


def _missing_message(name: str, pretrained: str, cache_dir: Path | None) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    where = cfg.get("hf_hub") or cfg.get("url") or "?"
    target = str(cache_dir) if cache_dir is not None else "DIR"
    return (
        f"open_clip weights {name}/{pretrained} ({where}) are not in the local cache "
        f"{_hub_cache_description(cache_dir)} and download=False.\nPre-download them where the internet is reachable:\n"
        f"    python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{pretrained}', "
        f"cache_dir='{target}')\"\n"
        f"then point SIDREPRO_CLIP_CACHE={target} at that folder (or, for the default hub cache, set HF_HUB_CACHE or "
        f"HF_HOME the same way on the compute nodes). Alternatively pass the weights file itself as `pretrained`, "
        f"or call load_clip(..., download=True) where the network is reachable.")


def load_clip(name: str, pretrained: str | Path, *, device: str | torch.device = "cpu",
              cache_dir: Path | None = None, download: bool = False) -> tuple[torch.nn.Module, Tokenizer]:
    """An open_clip model in eval mode (fp32, no grad) and its tokenizer.

    ``pretrained`` is an open_clip tag (looked up in ``cache_dir``, default ``clip_cache_dir()``, i.e. the hub
    cache) or a local weights file (a state dict, as ``tiny_clip_checkpoint`` writes). A tag missing from the cache
    raises ``ClipWeightsNotFound`` with the pre-download command unless ``download=True``.
    """
    import open_clip

    name = name.replace("/", "-")  # open_clip's own normalisation ("ViT-g/14" -> "ViT-g-14")
    sibling = Path(pretrained).parent / f"{name}.json"
    if open_clip.get_model_config(name) is None and Path(pretrained).is_file() and sibling.is_file():
        open_clip.add_model_config(sibling)  # a local model ships its config next to its weights
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"unknown open_clip model {name!r}: put its config as {name}.json next to the weights "
                         f"file, or register it with open_clip.add_model_config")
    cache_dir = Path(cache_dir) if cache_dir is not None else clip_cache_dir()
    source: str
    if Path(pretrained).is_file():
        source = str(pretrained)
    else:
        tag = str(pretrained)
        if not open_clip.get_pretrained_cfg(name, tag):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"{tag!r} is neither a weights file nor a pretrained tag of {name} "
                             f"(tags: {', '.join(tags) or 'none'})")
        found = cached_weights(name, tag, cache_dir)
        if found is not None:
            source = str(found)  # a file path: open_clip then makes no network call at all
        elif download:
            source = tag
        else:
            raise ClipWeightsNotFound(_missing_message(name, tag, cache_dir))
    model = open_clip.create_model(name, pretrained=source, device=device,
                                   cache_dir=str(cache_dir) if cache_dir is not None else None)
    model = model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(name)


def tiny_clip_checkpoint(folder: Path, *, seed: int = 0) -> tuple[str, Path]:
    """Register the tiny test config with open_clip and save a random model of it: ``(model name, weights file)``.

    The model is created with ``pretrained=None`` (offline) under a fixed seed; its config is written next to the
    weights, so ``load_clip(name, weights)`` loads it back in any process, the path real checkpoints take.
    """
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_CLIP}.json"  # open_clip names a config after its file stem; load_clip finds it here
    config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    if open_clip.get_model_config(TINY_CLIP) is None:
        open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP, pretrained=None)
    weights = folder / f"{TINY_CLIP}-seed{seed}.pt"
    torch.save(model.state_dict(), weights)
    return TINY_CLIP, weights


def preprocess_images(images: Tensor, size: int) -> Tensor:
    """``uint8`` ``N x 3 x H x W`` to the CLIP input: / 255, bicubic resize to ``size`` (no crop), OpenAI mean/std."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 N x 3 x H x W images, got {images.dtype} {tuple(images.shape)}")
    x = images.to(torch.float32) / 255.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _input_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


@torch.no_grad()
def clip_similarities(images_uint8: Tensor, captions: Sequence[str], model: torch.nn.Module, tokenizer: Tokenizer,
                      *, batch: int = 32) -> Tensor:
    """Raw cosine similarity of each image with its caption, ``(N,)`` float64 on the CPU."""
    if len(images_uint8) != len(captions):
        raise ValueError(f"{len(images_uint8)} images but {len(captions)} captions")
    device = next(model.parameters()).device
    size = _input_size(model)
    out = []
    for start in range(0, len(captions), batch):
        imgs = images_uint8[start:start + batch].to(device)
        tokens = tokenizer(list(captions[start:start + batch])).to(device)
        img = F.normalize(model.encode_image(preprocess_images(imgs, size)).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
        out.append((img * txt).sum(dim=-1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def clip_score(images_uint8: Tensor, captions: Sequence[str], model: torch.nn.Module, tokenizer: Tokenizer,
               *, batch: int = 32) -> float:
    """Mean raw CLIP cosine similarity over all image/caption pairs (in [-1, 1]; not x100, not clamped)."""
    if len(captions) == 0:
        raise ValueError("no images to score")
    return float(clip_similarities(images_uint8, captions, model, tokenizer, batch=batch).mean())

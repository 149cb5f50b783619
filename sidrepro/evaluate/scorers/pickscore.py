"""PickScore v1: a CLIP-H (transformers ``CLIPModel``) fine-tuned on Pick-a-Pic. Runs in the main environment
(transformers; PickScore has no package of its own).

As the reference (the model card / PickScore README ``calc_probs``): the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (CLIP image processor: PIL bicubic resize of the short side to 224,
centre crop 224, rescale 1/255, OpenAI mean/std; CLIP tokenizer with padding, truncation at 77), the model's
``get_image_features`` and ``get_text_features``, each L2-normalised, and ``logit_scale.exp() * cosine``: the raw
score (about 21-22 for good images), before any softmax over candidates. Each image is scored against its own
caption.

transformers 5 changed two things the README relies on, handled here: ``get_*_features`` return a model output whose
``pooler_output`` holds the projected embedding, and ``CLIPImageProcessor`` became the torchvision implementation;
we use ``CLIPImageProcessorPil``, the PIL/numpy path the reference ran under transformers 4 (the test compares with
the README code run under transformers 4.36 in the image_reward environment).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...teachers.tokenizers import bytes_to_unicode
from .base import ScorerInfo, fetch_hub_files, read_weights, versions, write_weights

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROCESSOR_FILES = ("preprocessor_config.json", "vocab.json", "merges.txt")
PROCESSOR_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")

INFO = ScorerInfo(
    name="pickscore", env=None,
    reference={"model_id": MODEL_REPO, "processor_id": PROCESSOR_REPO},
    preprocessing="CLIPImageProcessor (PIL): bicubic resize short side 224, centre crop 224, /255, OpenAI "
                  "mean/std; CLIP tokenizer, truncation 77; logit_scale.exp() * cosine (raw)",
    packages=("torch", "transformers", "tokenizers", "pillow"),
)


def fetch_weights(out: Path, *, lock_file: Path | None = None, update_lock: bool = False) -> dict[str, Any]:
    """The real weights at pinned commits: the PickScore model and the CLIP-H processor files."""
    model_dir, model_commit, _ = fetch_hub_files(
        MODEL_REPO, out, [["config.json"], ["model.safetensors", "pytorch_model.bin"]], lock_file=lock_file,
        update_lock=update_lock)
    proc_dir, proc_commit, _ = fetch_hub_files(
        PROCESSOR_REPO, out, [[n] for n in PROCESSOR_FILES], optional=PROCESSOR_OPTIONAL, lock_file=lock_file,
        update_lock=update_lock)
    return write_weights(out, INFO.name, tiny=False, files={"model": model_dir, "processor": proc_dir},
                         reference={"model_id": MODEL_REPO, "revision": model_commit,
                                    "processor_id": PROCESSOR_REPO, "processor_revision": proc_commit})


# ---------------------------------------------------------------------------------------- tiny offline model
TINY_MERGES = ("t h", "th e</w>", "a n", "i n", "o n</w>", "e r", "a t</w>", "r e", "o r</w>", "s t")


def write_tiny_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer with the byte alphabet, a few merges and the two special tokens (``vocab.json``,
    ``merges.txt`` and configs, as a hub CLIP tokenizer folder holds them); returns the vocabulary size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    for merge in TINY_MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
         "processor_class": "CLIPProcessor"}, indent=2), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "do_rescale": True,
         "rescale_factor": 1 / 255, "do_convert_rgb": True, "feature_extractor_type": "CLIPFeatureExtractor",
         "image_processor_type": "CLIPImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": {"shortest_edge": 224},
         "processor_class": "CLIPProcessor"}, indent=2), encoding="utf-8")
    return len(vocab)


def tiny_weights(out: Path, *, seed: int = 0) -> dict[str, Any]:
    """A random 2-layer ``CLIPModel`` (the class PickScore is) with a tiny CLIP tokenizer and the real processor
    settings, written offline. ``logit_scale`` is set to ln(100), PickScore's value."""
    import math

    from transformers import CLIPConfig, CLIPModel

    out = Path(out)
    vocab_size = write_tiny_tokenizer(out / "processor")
    eos = vocab_size - 1
    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu",
                     "bos_token_id": eos - 1, "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32, "hidden_act": "gelu"},
        projection_dim=32, logit_scale_init_value=math.log(100.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out / "model", safe_serialization=True)
    return write_weights(out, INFO.name, tiny=True, files={"model": out / "model", "processor": out / "processor"},
                         reference={"model_id": f"tiny random (seed {seed}) CLIPModel",
                                    "processor_id": "tiny CLIP tokenizer, real CLIP image processor settings"},
                         seed=seed)


# ---------------------------------------------------------------------------------------------------- scoring
def load(weights_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """``(model, image processor, tokenizer, weights record)``."""
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip import CLIPImageProcessorPil

    weights = read_weights(weights_dir, INFO.name)
    model = CLIPModel.from_pretrained(weights["files"]["model"], dtype=torch.float32)
    model = model.to(device).eval().requires_grad_(False)
    image_processor = CLIPImageProcessorPil.from_pretrained(weights["files"]["processor"])
    tokenizer = CLIPTokenizer.from_pretrained(weights["files"]["processor"])
    return model, image_processor, tokenizer, weights


def _embedding(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def score_pairs(files: list[Path], captions: list[str], model: nn.Module, image_processor: Any, tokenizer: Any,
                *, batch: int = 32) -> list[float]:
    """PickScore of each image with its own caption."""
    from PIL import Image

    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(files), batch):
        images = [Image.open(f) for f in files[start:start + batch]]
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        text = tokenizer(list(captions[start:start + batch]), padding=True, truncation=True, max_length=77,
                         return_tensors="pt").to(device)
        img = _embedding(model.get_image_features(pixel_values=pixels))
        txt = _embedding(model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
        img = img / torch.norm(img, dim=-1, keepdim=True)
        txt = txt / torch.norm(txt, dim=-1, keepdim=True)
        out += (model.logit_scale.exp() * (txt * img).sum(-1)).double().cpu().tolist()
    return out


def score(samples: list, weights_dir: Path, *, device: str = "cpu", batch: int = 32, **_: Any
          ) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """``(scores, weights record, facts)`` for ``samples`` (``base.Sample``)."""
    model, image_processor, tokenizer, weights = load(weights_dir, device)
    scores = score_pairs([s.file for s in samples], [s.caption for s in samples], model, image_processor, tokenizer,
                         batch=batch)
    return scores, weights, {"versions": versions(INFO.packages), "precision": "fp32", "env": None}

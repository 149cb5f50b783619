"""LAION aesthetic score: the improved-aesthetic-predictor MLP (``sac+logos+ava1-l14-linearMSE``) on L2-normalised
OpenAI CLIP ViT-L/14 image embeddings. Runs in the main environment (open_clip; no package of its own).

As the reference (christophschuhmann/improved-aesthetic-predictor ``simple_inference.py``, and ImageReward's
``AestheticScore`` built on it): the image through OpenAI CLIP's preprocessing (PIL bicubic resize of the short side
to 224, centre crop 224, RGB, ``ToTensor``, OpenAI mean/std), ``encode_image``, L2 normalisation, the 5-layer linear
MLP (768-1024-128-64-16-1, dropout only, no activations); the raw output is the score (about 5-7 for good images).
The caption is not used. The reference runs CLIP in fp16 on a GPU (``clip.load``'s default); we run fp32.

Weights: open_clip ``ViT-L-14`` / ``openai`` (hub ``timm/vit_large_patch14_clip_224.openai``, loaded as
``ViT-L-14-quickgelu``: the OpenAI towers use QuickGELU) and the MLP from ``camenduru/improved-aesthetic-predictor``
(a hub copy of the GitHub file), both pinned in the hub lock file. ``tiny_weights`` writes a random 2-layer CLIP of
the same open_clip class (768-d embedding, 64-wide heads, so OpenAI ``clip.load`` can rebuild it too) and a random
MLP of the real shape, with every weight rounded to fp16 (``clip.load`` rounds through fp16 on the way in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ScorerInfo, fetch_hub_files, read_weights, versions, write_weights

CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
MLP_REPO = "camenduru/improved-aesthetic-predictor"
MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_NAME = "ViT-L-14-quickgelu"
TINY_NAME = "sidrepro-tiny-aesthetic-clip"
TINY_CONFIG = {
    "embed_dim": 768, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 512, "width": 128, "heads": 2, "layers": 1},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

INFO = ScorerInfo(
    name="aesthetic", env=None,
    reference={"model_id": MLP_REPO, "file": MLP_FILE, "predictor": "improved-aesthetic-predictor v2 "
               "(sac+logos+ava1, linear MSE)", "clip_model_id": CLIP_REPO, "clip": "OpenAI CLIP ViT-L/14"},
    preprocessing="PIL bicubic resize short side 224, centre crop 224, RGB, OpenAI mean/std; L2-normalised "
                  "encode_image; MLP output raw",
    packages=("torch", "torchvision", "open_clip_torch", "pillow"),
)


class AestheticMLP(nn.Module):
    """The predictor head: linear layers with dropout between them and no activation (state-dict keys
    ``layers.{0,2,4,6,7}.*`` as in the released ``.pth``)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def preprocess(size: int = 224):
    """OpenAI CLIP's ``_transform(n_px)``."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                    lambda im: im.convert("RGB"), ToTensor(), Normalize(OPENAI_MEAN, OPENAI_STD)])


def fetch_weights(out: Path, *, lock_file: Path | None = None, update_lock: bool = False) -> dict[str, Any]:
    """The real weights at pinned commits: CLIP ViT-L/14 (OpenAI) and the MLP."""
    clip_dir, clip_commit, clip_files = fetch_hub_files(CLIP_REPO, out, [CLIP_FILES], lock_file=lock_file,
                                                        update_lock=update_lock)
    mlp_dir, mlp_commit, _ = fetch_hub_files(MLP_REPO, out, [[MLP_FILE]], lock_file=lock_file,
                                             update_lock=update_lock)
    return write_weights(out, INFO.name, tiny=False,
                         files={"clip": clip_dir / clip_files[0], "mlp": mlp_dir / MLP_FILE},
                         reference={"model_id": MLP_REPO, "revision": mlp_commit, "clip_model_id": CLIP_REPO,
                                    "clip_revision": clip_commit, "clip_open_clip": f"{CLIP_NAME} (ViT-L-14/openai)"},
                         clip_model=CLIP_NAME)


def tiny_weights(out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Random CLIP (same open_clip class) and MLP, fp16-exact, written offline."""
    import open_clip

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    if open_clip.get_model_config(TINY_NAME) is None:
        open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.create_model(TINY_NAME, pretrained=None)
        mlp = AestheticMLP(768)
    # The MLP's default init gives outputs near 0 for normalised inputs; scale its last layer so scores spread.
    with torch.no_grad():
        mlp.layers[7].weight.mul_(50.0)
        mlp.layers[7].bias.fill_(5.0)
    clip_sd = {k: v.half().float() for k, v in clip.state_dict().items()}
    mlp_sd = {k: v.half().float() for k, v in mlp.state_dict().items()}
    torch.save(clip_sd, out / f"{TINY_NAME}.pt")
    torch.save(mlp_sd, out / "tiny-aesthetic-mlp.pth")
    return write_weights(out, INFO.name, tiny=True,
                         files={"clip": out / f"{TINY_NAME}.pt", "mlp": out / "tiny-aesthetic-mlp.pth"},
                         reference={"model_id": f"tiny random (seed {seed}) {MLP_REPO} layout",
                                    "clip_model_id": f"tiny random {TINY_NAME}"},
                         clip_model=TINY_NAME, seed=seed)


def load(weights_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """``(clip, mlp, weights record)`` in eval mode on ``device``."""
    from ..clip_score import load_clip

    weights = read_weights(weights_dir, INFO.name)
    clip, _ = load_clip(weights["clip_model"], weights["files"]["clip"], device=device)
    mlp = AestheticMLP(768)
    mlp.load_state_dict(torch.load(weights["files"]["mlp"], map_location="cpu", weights_only=True))
    return clip, mlp.to(device).eval().requires_grad_(False), weights


@torch.no_grad()
def score_files(files: list[Path], clip: nn.Module, mlp: nn.Module, *, batch: int = 32) -> list[float]:
    """Aesthetic score of each image file."""
    from PIL import Image

    device = next(mlp.parameters()).device
    transform = preprocess(224)
    out: list[float] = []
    for start in range(0, len(files), batch):
        x = torch.stack([transform(Image.open(f)) for f in files[start:start + batch]]).to(device)
        feats = F.normalize(clip.encode_image(x).float(), dim=-1)
        out += mlp(feats).squeeze(-1).double().cpu().tolist()
    return out


def score(samples: list, weights_dir: Path, *, device: str = "cpu", batch: int = 32, **_: Any
          ) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """``(scores, weights record, facts)`` for ``samples`` (``base.Sample``)."""
    clip, mlp, weights = load(weights_dir, device)
    scores = score_files([s.file for s in samples], clip, mlp, batch=batch)
    return scores, weights, {"versions": versions(INFO.packages), "precision": "fp32", "env": None}

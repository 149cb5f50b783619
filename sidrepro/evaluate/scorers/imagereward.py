"""ImageReward v1.0: BLIP (ViT-L image encoder, BERT text encoder with cross-attention) plus an MLP head, trained on
human rankings. Runs in its own environment (workflow/envs/image_reward.txt): ``image-reward`` 1.5 pins
``timm==0.6.13`` (ours is 1.0) and ``fairscale==0.4.13``, and its BLIP code imports helpers that transformers 5
removed, so it gets transformers 4.36. The runner, ``env_image_reward.py`` beside this file, is what runs there; its
docstring says how it follows the reference. Score: the raw, normalised ImageReward (about 0.6-1.3 for good models).

Weights: ``ImageReward.pt`` and ``med_config.json`` of THUDM/ImageReward, and the ``bert-base-uncased`` tokenizer
files that the package would otherwise download at import time, each pinned in the hub lock file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ScorerError, ScorerInfo, env_record, fetch_hub_files, read_weights, run_runner, write_weights

REPO = "THUDM/ImageReward"
TOKENIZER_REPO = "google-bert/bert-base-uncased"

INFO = ScorerInfo(
    name="image_reward", env="image_reward", runner="env_image_reward.py",
    reference={"model_id": REPO, "model": "ImageReward-v1.0", "tokenizer_id": TOKENIZER_REPO,
               "package": "image-reward 1.5"},
    preprocessing="ImageReward preprocess: PIL bicubic resize short side 224, centre crop, RGB, OpenAI mean/std; "
                  "BERT tokenizer max_length 35; (MLP(CLS) - 0.16717) / 1.03334, raw",
    packages=(),
)


def fetch_weights(out: Path, *, lock_file: Path | None = None, update_lock: bool = False, **_: Any
                  ) -> dict[str, Any]:
    """ImageReward.pt, med_config.json and the BERT tokenizer at pinned commits."""
    folder, commit, _ = fetch_hub_files(REPO, out, [["ImageReward.pt"], ["med_config.json"]], lock_file=lock_file,
                                        update_lock=update_lock)
    tok, tok_commit, _ = fetch_hub_files(TOKENIZER_REPO, out, [["vocab.txt"], ["tokenizer_config.json"]],
                                         optional=("config.json",), lock_file=lock_file, update_lock=update_lock)
    return write_weights(out, INFO.name, tiny=False,
                         files={"checkpoint": folder / "ImageReward.pt", "med_config": folder / "med_config.json",
                                "tokenizer": tok},
                         reference={"model_id": REPO, "revision": commit, "file": "ImageReward.pt",
                                    "tokenizer_id": TOKENIZER_REPO, "tokenizer_revision": tok_commit})


def tiny_weights(out: Path, *, env: Path | None = None, seed: int = 0, **_: Any) -> dict[str, Any]:
    """A tiny random ImageReward of the package's own classes, built by the runner in its environment."""
    if env is None:
        raise ScorerError("the tiny ImageReward model is built by the image-reward package: pass --env (the "
                          "image_reward environment)")
    env_info = env_record(env, INFO)
    out = Path(out).resolve()
    answer = run_runner(INFO, env, "tiny", {"out": str(out), "seed": seed})
    return write_weights(out, INFO.name, tiny=True,
                         files={"checkpoint": Path(answer["checkpoint"]), "med_config": Path(answer["med_config"]),
                                "tokenizer": Path(answer["tokenizer"]), "vit": Path(answer["vit"])},
                         reference={"model_id": f"tiny random (seed {seed}) ImageReward"}, seed=seed,
                         built_with=answer["versions"], env_spec_sha256=env_info["spec_sha256"])


def score(samples: list, weights_dir: Path, *, env: Path | None = None, device: str = "cpu", batch: int = 32,
          threads: int | None = None, **_: Any) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """``(scores, weights record, facts)``: the runner scores in the image_reward environment."""
    if env is None:
        raise ScorerError("ImageReward runs in its own environment: pass --env DIR (built by `sidrepro env --spec "
                          "workflow/envs/image_reward.txt --out DIR`)")
    env_info = env_record(env, INFO)
    weights = read_weights(weights_dir, INFO.name)
    files = weights["files"]
    request = {"checkpoint": str(files["checkpoint"]), "med_config": str(files["med_config"]),
               "tokenizer": str(files["tokenizer"]), "vit": str(files["vit"]) if "vit" in files else None,
               "device": device, "batch": batch,
               "items": [{"file": str(s.file), "caption": s.caption} for s in samples]}
    answer = run_runner(INFO, env, "score", request, threads=threads)
    return answer["scores"], weights, {"versions": answer["versions"], "precision": answer["precision"],
                                       "env": env_info, "extra": {"checkpoint_load": answer.get("load")}}

"""HPSv2 (Human Preference Score v2): an open_clip ViT-H-14 fine-tuned on HPD v2. Runs in its own environment
(workflow/envs/hpsv2.txt): the ``hpsv2`` package pins ``protobuf<4`` and ``pytest==7.2.0`` (our dev pin is pytest 9)
and ships its own copy of open_clip, so its model code is run as it is rather than re-created with ours. The
runner, ``env_hpsv2.py`` beside this file, is what runs there; its docstring says how it follows the reference.

Score: the raw cosine of the normalised image and caption embeddings (about 0.3; not x100). The paper does not say
whether it used HPS v2.0 or v2.1 (eval_protocol.md: OPEN); the version is a choice recorded with every number
(``--hps-version``, default v2.1, the checkpoint the HPSv2 authors recommend; ``hpsv2.score`` defaults to v2.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ScorerError, ScorerInfo, env_record, fetch_hub_files, read_weights, run_runner, write_weights

REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
DEFAULT_VERSION = "v2.1"
MODEL_NAME = "ViT-H-14"

INFO = ScorerInfo(
    name="hpsv2", env="hpsv2", runner="env_hpsv2.py",
    reference={"model_id": REPO, "architecture": "open_clip ViT-H-14 (hpsv2's vendored copy)",
               "package": "hpsv2 1.2.0 (installed as hpsv2x 1.2.0: same code plus the BPE vocabulary file)"},
    preprocessing="hpsv2 preprocess_val: ToTensor, bicubic resize short side 224, centre crop, OpenAI mean/std; "
                  "hpsv2 tokenizer (77); diagonal of image_features @ text_features.T (normalised), raw",
    packages=(),
)


def fetch_weights(out: Path, *, version: str = DEFAULT_VERSION, lock_file: Path | None = None,
                  update_lock: bool = False, **_: Any) -> dict[str, Any]:
    """The HPS checkpoint of ``version`` at the pinned commit of xswu/HPSv2."""
    if version not in CHECKPOINTS:
        raise ValueError(f"HPS version {version!r}: choose one of {', '.join(CHECKPOINTS)}")
    folder, commit, _ = fetch_hub_files(REPO, out, [[CHECKPOINTS[version]]], lock_file=lock_file,
                                        update_lock=update_lock)
    return write_weights(out, INFO.name, tiny=False, files={"checkpoint": folder / CHECKPOINTS[version]},
                         reference={"model_id": REPO, "revision": commit, "file": CHECKPOINTS[version],
                                    "hps_version": version},
                         model_name=MODEL_NAME)


def tiny_weights(out: Path, *, env: Path | None = None, seed: int = 0, **_: Any) -> dict[str, Any]:
    """A random 2-layer model of the package's own classes, built by the runner in the hpsv2 environment."""
    if env is None:
        raise ScorerError("the tiny HPSv2 model is built by the hpsv2 package: pass --env (the hpsv2 environment)")
    env_info = env_record(env, INFO)
    out = Path(out).resolve()
    answer = run_runner(INFO, env, "tiny", {"out": str(out), "seed": seed})
    return write_weights(out, INFO.name, tiny=True,
                         files={"checkpoint": Path(answer["checkpoint"]), "config": Path(answer["config"])},
                         reference={"model_id": f"tiny random (seed {seed}) {answer['model_name']}",
                                    "hps_version": "tiny"},
                         model_name=answer["model_name"], seed=seed, built_with=answer["versions"],
                         env_spec_sha256=env_info["spec_sha256"])


def score(samples: list, weights_dir: Path, *, env: Path | None = None, device: str = "cpu", batch: int = 32,
          threads: int | None = None, **_: Any) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """``(scores, weights record, facts)``: the runner scores in the hpsv2 environment."""
    if env is None:
        raise ScorerError("HPSv2 runs in its own environment: pass --env DIR (built by `sidrepro env --spec "
                          "workflow/envs/hpsv2.txt --out DIR`)")
    env_info = env_record(env, INFO)
    weights = read_weights(weights_dir, INFO.name)
    files = weights["files"]
    request = {"model_name": weights["model_name"], "checkpoint": str(files["checkpoint"]),
               "config": str(files["config"]) if "config" in files else None, "device": device, "batch": batch,
               "items": [{"file": str(s.file), "caption": s.caption} for s in samples]}
    answer = run_runner(INFO, env, "score", request, threads=threads)
    return answer["scores"], weights, {"versions": answer["versions"], "precision": answer["precision"],
                                       "env": env_info}

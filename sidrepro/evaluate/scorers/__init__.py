"""The four preference metrics of the paper's v2 tables: LAION aesthetic score, HPSv2, ImageReward and PickScore.

| scorer | runs in | why |
|---|---|---|
| ``aesthetic`` | main env (open_clip) | the predictor is an MLP file, no package |
| ``pickscore`` | main env (transformers ``CLIPModel``) | the reference is model-card code, no package |
| ``hpsv2`` | ``workflow/envs/hpsv2.txt`` | ``hpsv2`` pins protobuf<4 and pytest==7.2.0, vendors its own open_clip |
| ``image_reward`` | ``workflow/envs/image_reward.txt`` | pins timm==0.6.13, fairscale; BLIP code needs transformers 4 |

``score_samples`` scores a merged sample folder and writes the record described in ``base``; ``fetch_weights`` gets
a scorer's real weights at pinned hub commits, ``tiny_weights`` writes random offline ones of the same classes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from .base import ScorerError, ScorerInfo, build_record, read_samples, write_record

SCORERS = ("aesthetic", "hpsv2", "image_reward", "pickscore")
_MODULES = {"aesthetic": "aesthetic", "hpsv2": "hps", "image_reward": "imagereward", "pickscore": "pickscore"}

__all__ = ["SCORERS", "ScorerError", "ScorerInfo", "fetch_weights", "get_scorer", "score_samples", "tiny_weights"]


def get_scorer(name: str) -> ModuleType:
    """The module of scorer ``name`` (its ``INFO``, ``fetch_weights``, ``tiny_weights`` and ``score``)."""
    if name not in _MODULES:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def score_samples(name: str, samples: Path, out: Path, *, weights: Path, env: Path | None = None,
                  device: str = "cpu", batch: int = 32, threads: int | None = None) -> dict[str, Any]:
    """Score every image of the merged sample folder ``samples`` against its caption and write the record to
    ``out`` (atomically); return it."""
    module = get_scorer(name)
    info: ScorerInfo = module.INFO
    if info.env is not None and env is None:
        raise ScorerError(f"{name} runs in its own environment: pass env (built by `sidrepro env --spec "
                          f"workflow/envs/{info.env}.txt --out DIR`)")
    samples = Path(samples)
    items = read_samples(samples)
    scores, weights_record, facts = module.score(items, Path(weights), env=env, device=device, batch=batch,
                                                 threads=threads)
    if len(scores) != len(items):
        raise ScorerError(f"{name}: {len(scores)} scores for {len(items)} images")
    record = build_record(info, samples, [float(s) for s in scores], weights_record, versions_=facts["versions"],
                          env=facts["env"], precision=facts["precision"],
                          extra={"device": device, **facts.get("extra", {})})
    write_record(out, record)
    return record


def fetch_weights(name: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    """The scorer's real weights at the commits pinned in the lock file (``lock_file``, ``update_lock``; HPSv2 also
    takes ``version``)."""
    return get_scorer(name).fetch_weights(Path(out), **kwargs)


def tiny_weights(name: str, out: Path, *, env: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Random offline weights of the scorer's real model classes (tests, smoke runs)."""
    module = get_scorer(name)
    if module.INFO.env is None:
        return module.tiny_weights(Path(out), seed=seed)
    return module.tiny_weights(Path(out), env=env, seed=seed)

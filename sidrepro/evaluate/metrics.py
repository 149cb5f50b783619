"""One evaluation: a sample folder against the COCO reference under a named protocol -> FID, CLIP score and the
record that pins them (protocol, counts, reference statistics, sample manifest and model hashes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .clip_score import clip_score, load_clip
from .fid import features_for_folder, fid_against_stats, inception_feature_fn
from .protocols import EvalProtocol, check_sample_folder, get_protocol, metrics_record, write_metrics
from .reference import CocoReference, load_reference_stats, reference_stats

MANIFEST = "manifest.jsonl"


def reference_stats_for(ref: CocoReference, protocol: EvalProtocol | str, *,
                        device: str | torch.device | None = None) -> Path:
    """The protocol's FID statistics of the whole reference folder, computed once and cached under ``stats/``."""
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    out = ref.root / "stats" / f"{protocol.name}-v{protocol.version}-{protocol.fid_mode}.npz"
    out.parent.mkdir(exist_ok=True)
    return reference_stats(ref.images_dir, out, feature_fn=inception_feature_fn(protocol.fid_mode, device),
                           protocol=protocol.id)


def _manifest_rows(samples: Path) -> list[dict]:
    path = samples / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: merge the shards' manifests first (`sidrepro sample` does it "
                                f"for a single shard; `sidrepro evaluate` needs every shard done)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _student_selection(samples: Path) -> dict | None:
    """How the sampled student's snapshot was chosen (``sidrepro export --select``), from the student folder the
    sample plan names; ``None`` for teachers, baselines and students exported from their latest checkpoint."""
    from ..teachers.student import STUDENT_FILE

    try:
        folder = json.loads((samples / "plan.json").read_text())["source"].get("folder")
        return json.loads((Path(folder) / STUDENT_FILE).read_text()).get("selection") if folder else None
    except (OSError, ValueError, KeyError):
        return None


def evaluate_samples(samples: Path, reference: Path, protocol: str, out: Path, *,
                     clip: tuple[str, str | Path] | None = None, device: str | torch.device | None = None,
                     require_complete: bool = True, batch: int = 32) -> dict:
    """FID and CLIP score of ``samples`` (a folder from ``sidrepro sample`` with its merged manifest) under
    ``protocol``; writes and returns the metrics record. ``clip`` overrides the protocol's CLIP model as
    ``(name, tag or weights file)`` (tests use a tiny local model through the same code path)."""
    prot = get_protocol(protocol)
    samples = Path(samples)
    check_sample_folder(samples, prot, require_complete=require_complete)
    rows = _manifest_rows(samples)
    ref = CocoReference.open(reference)
    stats_file = reference_stats_for(ref, prot, device=device)
    ref_stats = load_reference_stats(stats_file)
    feats = features_for_folder(samples, prot.fid_mode, device=device, cache=samples / ".features")
    fid = fid_against_stats(feats, ref_stats.mu, ref_stats.sigma)
    name, pretrained = clip or (prot.clip_model, prot.clip_pretrained)
    model, tokenizer = load_clip(name, pretrained, device=device or "cpu")
    images = torch.stack([torch.from_numpy(np.array(Image.open(samples / r["file"]).convert("RGB"))).permute(2, 0, 1)
                          for r in rows])
    score = clip_score(images, [r["caption"] for r in rows], model, tokenizer, batch=batch)
    hashes = {r["model_hash"] for r in rows}
    if len(hashes) != 1:
        raise ValueError(f"{samples} mixes images of {len(hashes)} models; sample each model into its own folder")
    record = metrics_record(prot, num_images=len(rows), fid=fid, clip=score,
                            reference_stats=stats_file,
                            manifest=samples / MANIFEST, model_hash=hashes.pop(),
                            extra={"clip_override": None if clip is None else f"{name}/{pretrained}",
                                   "model": rows[0].get("model"), "kind": rows[0].get("kind"),
                                   "steps": rows[0].get("steps"), "guidance": rows[0].get("guidance"),
                                   "selection": _student_selection(samples)})
    write_metrics(out, record)
    return record

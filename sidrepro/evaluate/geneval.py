"""GenEval (djghosh13/geneval): 553 object-focused prompts x 4 images, scored by a Mask2Former detector (mmdetection
2.x) plus CLIP ViT-L-14 colour classification, summarised as per-task accuracy and their mean ("overall").

The detector stack (mmcv-full 1.7, mmdet 2.27, torch 1.12) cannot live in our environment, so the split is:

- here, in the main environment and without torch: the benchmark's metadata (pinned URL and sha256), its caption
  rows for the sharded sampler (``caption_rows``), the conversion of a sample folder into GenEval's folder layout
  (``make_layout``), the pinned model downloads, and the summary arithmetic (``summarize``, GenEval's
  summary_scores.py);
- in the separate environment (workflow/envs/geneval.txt, built by ``sidrepro env``): ``geneval_scorer.py``, a
  standalone script that runs the detector and CLIP and applies GenEval's rules, writing one result line per image.

``score`` runs the script with the environment's interpreter and writes the metrics JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic, write_json_atomic
from ..hashing import file_digest as sha256_file

log = logging.getLogger(__name__)

REPO = "djghosh13/geneval"
COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"  # main on 2025-03-03; the prompts last changed in d927da8 (2023)
METADATA_URL = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/prompts/evaluation_metadata.jsonl"
METADATA_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"
NUM_PROMPTS = 553
IMAGES_PER_PROMPT = 4
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# evaluation/download_models.sh: OpenMMLab's Mask2Former Swin-S COCO instance-segmentation weights, saved under the
# config's name. OpenMMLab file names end in the first 8 hex digits of the file's sha256.
DETECTOR_NAME = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
DETECTOR_URL = ("https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-"
                "50e_coco/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth")
DETECTOR_SHA256_PREFIX = "c9d0c4f2"
CLIP_MODEL, CLIP_PRETRAINED = "ViT-L-14", "openai"
SCORER = Path(__file__).with_name("geneval_scorer.py")
MODELS_FILE = "models.json"  # written by fetch_models: the real detector and CLIP
TINY_FILE = "tiny.json"  # written by the scorer's `tiny` command: random-weight stand-ins (tests, smoke)
DOWNLOAD_TIMEOUT_S = 60.0


class GenEvalError(RuntimeError):
    """A GenEval input or step that cannot go on, with what to do about it."""


# --- prompts --------------------------------------------------------------------------------------------------------

def load_metadata(path: Path) -> list[dict[str, Any]]:
    """The benchmark's ``evaluation_metadata.jsonl``: one JSON object per line with ``tag`` (the task), ``prompt``,
    ``include`` (and, for counting, ``exclude``) clauses of ``class``/``count`` and optional ``color``/``position``."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise GenEvalError(f"{path}: line {n} is not JSON") from None
        problems = []
        if row.get("tag") not in TASKS:
            problems.append(f"tag {row.get('tag')!r} is not one of {', '.join(TASKS)}")
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            problems.append("no prompt")
        for key in ("include", "exclude"):
            clauses = row.get(key, [])
            if not isinstance(clauses, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("class"), str) and isinstance(c.get("count"), int)
                    for c in clauses):
                problems.append(f"{key} must be a list of {{class, count}} clauses")
        if not row.get("include"):
            problems.append("no include clause")
        if problems:
            raise GenEvalError(f"{path}: line {n}: " + "; ".join(problems))
        rows.append(row)
    if not rows:
        raise GenEvalError(f"{path} holds no prompts")
    return rows


def caption_rows(metadata: Sequence[dict[str, Any]], images_per_prompt: int = IMAGES_PER_PROMPT
                 ) -> list[tuple[int, int, str]]:
    """Caption rows ``(prompt_id, image_id, caption)`` for the sharded sampler: image ``k`` of metadata line ``i``
    gets prompt id ``i * images_per_prompt + k`` (its seed: ``image_seed(seed, prompt_id)``, distinct per image) and
    image id ``i`` (the metadata line it answers)."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    return [(i * images_per_prompt + k, i, str(m["prompt"])) for i, m in enumerate(metadata)
            for k in range(images_per_prompt)]


def write_captions(rows: Iterable[tuple[int, int, str]], path: Path) -> None:
    """Caption rows as JSONL (``prompt_id``, ``image_id``, ``caption``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, b"".join(
        json.dumps({"prompt_id": p, "image_id": i, "caption": c}, ensure_ascii=False).encode() + b"\n"
        for p, i, c in rows))


def read_captions(path: Path) -> list[tuple[int, int, str]]:
    """Caption rows from a JSONL file of ``write_captions`` (``sidrepro sample --captions``)."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((int(row["prompt_id"]), int(row["image_id"]), str(row["caption"])))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not a {{prompt_id, image_id, caption}} JSON row") from None
    if not rows:
        raise ValueError(f"{path} holds no caption rows")
    return rows


# --- sample folder -> GenEval layout --------------------------------------------------------------------------------

def make_layout(samples: Path, metadata: Sequence[dict[str, Any]], out: Path, *,
                images_per_prompt: int = IMAGES_PER_PROMPT, require_complete: bool = True) -> int:
    """Write GenEval's folder layout for a merged sample folder (``samples/manifest.jsonl``): ``out/NNNNN/
    metadata.jsonl`` (metadata line NNNNN) and ``out/NNNNN/samples/KKKK.png``, hard links to the sampled PNGs (copies
    across file systems). Checks every image's caption against its metadata line and, with ``require_complete``,
    that every line has its ``images_per_prompt`` images. Returns the number of images."""
    samples, out = Path(samples), Path(out)
    manifest = samples / "manifest.jsonl"
    if not manifest.exists():
        raise GenEvalError(f"{manifest} missing: merge the shards first (`sidrepro merge-samples {samples}`)")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_line: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        i = int(row["image_id"])
        if not 0 <= i < len(metadata):
            raise GenEvalError(f"{manifest}: image id {i} is not a line of the metadata ({len(metadata)} lines)")
        if row["caption"] != metadata[i]["prompt"]:
            raise GenEvalError(f"{manifest}: prompt id {row['prompt_id']} has caption {row['caption']!r}, metadata "
                               f"line {i} says {metadata[i]['prompt']!r}; sample with this metadata's captions")
        by_line.setdefault(i, []).append(row)
    short = [i for i in range(len(metadata)) if len(by_line.get(i, [])) < images_per_prompt]
    if require_complete and short:
        raise GenEvalError(f"{samples}: {len(short)} of {len(metadata)} prompts have fewer than {images_per_prompt} "
                           f"images (lines {short[:10]}{' ...' if len(short) > 10 else ''})")
    if out.exists():
        shutil.rmtree(out)
    count = 0
    for i, group in sorted(by_line.items()):
        folder = out / f"{i:05d}" / "samples"
        folder.mkdir(parents=True)
        (folder.parent / "metadata.jsonl").write_text(json.dumps(metadata[i]) + "\n", encoding="utf-8")
        for k, row in enumerate(sorted(group, key=lambda r: int(r["prompt_id"]))):
            src, dst = samples / row["file"], folder / f"{k:04d}.png"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            count += 1
    return count


# --- summary (GenEval's summary_scores.py) --------------------------------------------------------------------------

def summarize(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary of per-image results (``tag``, ``correct`` and ``metadata``, the prompt's metadata as a
    JSON string or dict): per task the fraction of correct images; ``overall`` the unweighted mean over the tasks
    present; ``correct_images`` the fraction of all images; ``correct_prompts`` the fraction of prompts with at
    least one correct image."""
    counts: dict[str, list[int]] = {}
    prompts: dict[str, bool] = {}
    n = 0
    for row in results:
        tag, ok = str(row["tag"]), bool(row["correct"])
        meta = row["metadata"] if isinstance(row["metadata"], str) else json.dumps(row["metadata"], sort_keys=True)
        c = counts.setdefault(tag, [0, 0])
        c[0] += ok
        c[1] += 1
        prompts[meta] = prompts.get(meta, False) or ok
        n += 1
    if not n:
        raise GenEvalError("no results to summarise")
    per_task = {t: c[0] / c[1] for t, c in counts.items()}
    return {"overall": sum(per_task.values()) / len(per_task), "per_task": per_task,
            "per_task_counts": {t: {"correct": c[0], "images": c[1]} for t, c in counts.items()},
            "num_images": n, "num_prompts": len(prompts),
            "correct_images": sum(c[0] for c in counts.values()) / n,
            "correct_prompts": sum(prompts.values()) / len(prompts)}


def read_results(path: Path) -> list[dict[str, Any]]:
    """The scorer's per-image result lines."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --- downloads ------------------------------------------------------------------------------------------------------

def download(url: str, out: Path, *, sha256: str | None = None, sha256_prefix: str | None = None) -> str:
    """``url`` into ``out`` through a ``.part`` file, refused unless its sha256 is ``sha256`` (or starts with
    ``sha256_prefix``); returns the sha256. An existing ``out`` with the right hash is kept."""
    out = Path(out)

    def check(digest: str) -> bool:
        return (sha256 is None or digest == sha256) and (sha256_prefix is None or digest.startswith(sha256_prefix))

    if out.is_file():
        digest = sha256_file(out)
        if check(digest):
            return digest
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as handle:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                h.update(chunk)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise GenEvalError(f"could not download {url}: {getattr(err, 'reason', err)}. Without internet access, "
                           f"download it elsewhere and place it at {out}") from err
    digest = h.hexdigest()
    if not check(digest):
        part.unlink(missing_ok=True)
        want = sha256 or f"{sha256_prefix}..."
        raise GenEvalError(f"{url}: sha256 {digest}, expected {want}; the file changed upstream, refusing it")
    os.replace(part, out)
    return digest


def fetch_metadata(out: Path, *, url: str = METADATA_URL, sha256: str = METADATA_SHA256) -> str:
    """The benchmark's metadata file at the pinned commit, checked against its sha256."""
    return download(url, out, sha256=sha256)


def fetch_models(env: Path, out: Path, *, detector_sha256: str | None = None, clip_model: str = CLIP_MODEL,
                 clip_pretrained: str = CLIP_PRETRAINED) -> dict[str, Any]:
    """The Mask2Former weights (sha256 prefix from OpenMMLab's file name, or the full ``detector_sha256``) and the
    CLIP weights (downloaded by the environment's open_clip, which checks their published hash) into ``out``, then
    ``out/models.json`` recording files and hashes. Scoring then needs no network."""
    out = Path(out)
    weights = out / f"{DETECTOR_NAME}.pth"
    digest = download(DETECTOR_URL, weights, sha256=detector_sha256, sha256_prefix=DETECTOR_SHA256_PREFIX)
    clip = _run_scorer(env, ["fetch-clip", "--clip-model", clip_model, "--clip-pretrained", clip_pretrained,
                             "--clip-cache", str(out / "clip")], "fetching the CLIP weights")
    record = {"detector": {"name": DETECTOR_NAME, "url": DETECTOR_URL, "file": weights.name, "sha256": digest},
              "clip": json.loads(clip.strip().splitlines()[-1]), "clip_cache": "clip"}
    write_json_atomic(out / MODELS_FILE, record)
    return record


# --- scoring --------------------------------------------------------------------------------------------------------

def _run_scorer(env: Path, args: list[str], what: str, log_file: Path | None = None) -> str:
    from ..envs import env_python, read_stamp

    env = Path(env)
    if read_stamp(env) is None:
        raise GenEvalError(f"{env} is not a built environment: sidrepro env --spec workflow/envs/geneval.txt --out "
                           f"{env}")
    # -I: isolated (no PYTHON* variables, no user site, and not the script's folder, whose module names would
    # shadow the environment's).
    cmd = [str(env_python(env)), "-I", str(SCORER), *args]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean)
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    else:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise GenEvalError(f"{what} failed in {env} (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def detector_files(folder: Path) -> dict[str, str | None]:
    """What ``score`` hands the scorer from a models folder: the fetched real models (``models.json``) or the tiny
    random-weight ones (``tiny.json``)."""
    folder = Path(folder)
    if (folder / MODELS_FILE).exists():
        rec = json.loads((folder / MODELS_FILE).read_text())
        return {"detector_config": None, "detector_weights": str(folder / rec["detector"]["file"]),
                "clip_model": rec["clip"]["model"], "clip_pretrained": rec["clip"]["pretrained"],
                "clip_cache": str(folder / rec["clip_cache"]), "kind": "geneval"}
    if (folder / TINY_FILE).exists():
        rec = json.loads((folder / TINY_FILE).read_text())
        return {**{k: str(folder / rec[k]) for k in ("detector_config", "detector_weights", "clip_model",
                                                      "clip_pretrained")},
                "clip_cache": None, "kind": f"tiny-random(seed={rec['seed']})"}
    raise GenEvalError(f"{folder} holds neither {MODELS_FILE} (sidrepro geneval fetch-models) nor {TINY_FILE} "
                       "(sidrepro geneval tiny)")


def score(samples: Path, metadata_file: Path, env: Path, detector: Path, out: Path, *, device: str = "cpu",
          options: dict[str, Any] | None = None, work: Path | None = None, require_complete: bool = True,
          images_per_prompt: int = IMAGES_PER_PROMPT, log_file: Path | None = None) -> dict[str, Any]:
    """Score a merged sample folder: GenEval layout in ``work`` (default ``out``'s folder / ``geneval-<stem>``), the
    scorer in the environment ``env`` with the models in ``detector``, then the metrics JSON ``out``."""
    from ..envs import read_stamp
    from ..revision import code_revision

    samples, out = Path(samples), Path(out)
    metadata = load_metadata(metadata_file)
    meta_sha = sha256_file(Path(metadata_file))
    work = Path(work) if work is not None else out.parent / f"geneval-{out.stem}"
    work.mkdir(parents=True, exist_ok=True)
    num = make_layout(samples, metadata, work / "images", images_per_prompt=images_per_prompt,
                      require_complete=require_complete)
    models = detector_files(detector)
    results, info = work / "results.jsonl", work / "info.json"
    args = ["score", str(work / "images"), "--outfile", str(results), "--info", str(info), "--device", device,
            "--detector-weights", models["detector_weights"], "--clip-model", models["clip_model"],
            "--clip-pretrained", models["clip_pretrained"], "--progress", "100"]
    if models["detector_config"]:
        args += ["--detector-config", models["detector_config"]]
    if models["clip_cache"]:
        args += ["--clip-cache", models["clip_cache"]]
    for k, v in (options or {}).items():
        args += ["--option", f"{k}={v}"]
    _run_scorer(env, args, "GenEval scoring", log_file)
    rows = read_results(results)
    if len(rows) != num:
        raise GenEvalError(f"the scorer judged {len(rows)} of {num} images; see {results}")
    summary = summarize(rows)
    details = json.loads(info.read_text())
    manifest = samples / "manifest.jsonl"
    plan = json.loads((samples / "plan.json").read_text()) if (samples / "plan.json").exists() else {}
    stamp = read_stamp(env) or {}
    record = {
        "metric": "geneval",
        "geneval": summary["overall"],
        "per_task": summary["per_task"],
        "per_task_counts": summary["per_task_counts"],
        "num_images": summary["num_images"],
        "num_prompts": summary["num_prompts"],
        "correct_images": summary["correct_images"],
        "correct_prompts": summary["correct_prompts"],
        "complete": meta_sha == METADATA_SHA256 and summary["num_images"] == NUM_PROMPTS * IMAGES_PER_PROMPT,
        "metadata": {"file": str(metadata_file), "sha256": meta_sha, "official": meta_sha == METADATA_SHA256,
                     "url": METADATA_URL},
        "sample_manifest": str(manifest),
        "sample_manifest_sha256": sha256_file(manifest),
        "model_hash": (plan.get("model") or {}).get("model_hash"),
        "seed": plan.get("seed"),
        "resolution_out": plan.get("resolution_out"),
        "results": str(results),
        "reference": {"models": models["kind"], "detector": details["detector"], "clip": details["clip"],
                      "options": details["options"]},
        "versions": {**details["versions"], "env_spec_sha256": stamp.get("spec_sha256"),
                     "env_python": stamp.get("python")},
        "code": code_revision(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, record)
    return record

"""`sidrepro provenance`: a table cell traced through the metrics file, the sample plan and the student folder to
the checkpoint and parameters, with every recorded hash checked against the files; errors that name the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sidrepro.cli import main
from sidrepro.provenance import ProvenanceError, folder_digest, params_digest, trace
from sidrepro.tables import build_table, write_table

MAPPING = {"tiny-sana--data-free": {"table": "table1", "block": "SANA 0.6B (RF)", "setting": "data-free"}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def chain(tmp_path, monkeypatch):
    """A student's files as the workflow lays them out (relative paths, run from the workflow's folder)."""
    monkeypatch.chdir(tmp_path)
    ckpt = Path("runs/tiny-sana/data-free/checkpoints/ckpt-0000000008")
    ckpt.mkdir(parents=True)
    (ckpt / "generator.safetensors").write_bytes(b"weights")
    (ckpt / "state.json").write_text("{}")
    student = Path("students/tiny-sana--data-free")
    student.mkdir(parents=True)
    config = {"teacher": "tiny-sana", "lsg": 100.0, "seed": 0}
    (student / "sidrepro_student.json").write_text(json.dumps({
        "teacher": "tiny-sana", "hub_id": "tiny-sana", "revision": "main", "commit": "abc", "setting": "data-free",
        "images_seen": 8, "checkpoint": str(ckpt), "config": config,
        "code": {"version": "0.1.0", "commit": "c0ffee", "dirty": False}}))
    samples = Path("samples/tiny-sana--data-free")
    samples.mkdir(parents=True)
    (samples / "manifest.jsonl").write_text('{"prompt_id": 0}\n')
    (samples / "plan.json").write_text(json.dumps({"seed": 0, "captions_sha256": "cap", "source": {
        "folder": str(student)}, "model": {"kind": "student", "model_hash": "sha256:mm"}}))
    stats = Path("reference/stats.npz")
    stats.parent.mkdir()
    stats.write_bytes(b"stats")
    metrics = Path("metrics/tiny-sana--data-free.json")
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({
        "fid": 30.0, "clip_score": 0.31, "num_images": 16, "complete": False, "protocol_id": "paper@1",
        "sample_manifest": str(samples / "manifest.jsonl"), "sample_manifest_sha256": _sha(samples / "manifest.jsonl"),
        "reference_stats": str(stats), "reference_stats_sha256": _sha(stats), "kind": "student",
        "model": "student-of-tiny-sana", "model_hash": "sha256:mm", "versions": {"torch": "2"},
        "code": {"version": "0.1.0", "commit": "c0ffee", "dirty": True}}))
    table = Path("results/table1.csv")
    write_table(build_table("table1", "v2", [metrics], MAPPING, run="smoke"), table)
    return {"table": table, "ckpt": ckpt, "config": config, "samples": samples, "metrics": metrics}


def test_a_cell_traces_to_checkpoint_params_and_code(chain):
    t = trace(chain["table"], "tiny-sana--data-free", "FID_coco10k")
    assert t["cell"]["ours"] == "30" and t["cell"]["paper"] == "29.43"
    assert t["metrics"]["matches"] and t["samples"]["matches"] and t["reference_stats"]["matches"]
    model = t["model"]
    assert model["checkpoint"] == {"path": str(chain["ckpt"]), "exists": True, "sha256": folder_digest(chain["ckpt"])}
    assert model["params"] == chain["config"] and model["params_sha256"] == params_digest(chain["config"])
    assert model["train_code"]["commit"] == "c0ffee" and t["eval_code"]["dirty"] is True
    assert model["teacher_commit"] == "abc" and t["dvc"] == []


def test_changed_files_are_reported_not_trusted(chain):
    (chain["samples"] / "manifest.jsonl").write_text('{"prompt_id": 1}\n')
    assert trace(chain["table"], "data-free")["samples"]["matches"] is False
    chain["metrics"].write_text(chain["metrics"].read_text().replace("30.0", "31.0"))
    assert trace(chain["table"], "data-free")["metrics"]["matches"] is False


def test_dvc_lock_names_the_stage_holding_the_files(chain):
    Path("dvc.lock").write_text("schema: '2.0'\nstages:\n  run@smoke:\n    cmd: x\n    outs:\n"
                                "    - path: runs\n      md5: aa.dir\n    - path: metrics\n      md5: bb.dir\n")
    stages = trace(chain["table"], "tiny-sana--data-free")["dvc"]
    assert {(d["stage"], d["path"], d["md5"]) for d in stages} == {("run@smoke", "runs", "aa.dir"),
                                                                  ("run@smoke", "metrics", "bb.dir")}


def test_bad_requests_name_the_fix(chain, capsys):
    with pytest.raises(ProvenanceError, match="model ids: tiny-sana--data-free"):
        trace(chain["table"], "no such row")
    with pytest.raises(ProvenanceError, match="valid: FID_coco10k"):
        trace(chain["table"], "data-free", "FID")
    with pytest.raises(ProvenanceError, match="not measured"):
        trace(chain["table"], "data-free", "HPSv2")
    with pytest.raises(ProvenanceError, match="build it first"):
        trace(Path("results/table9.csv"), "x")
    chain["metrics"].unlink()
    assert main(["provenance", str(chain["table"]), "--row", "data-free"]) == 2
    assert "after `dvc pull`" in capsys.readouterr().err


def test_command_prints_the_chain(chain, capsys):
    assert main(["provenance", str(chain["table"]), "--row", "tiny-sana--data-free", "--metric", "CLIP_vitg14"]) == 0
    out = capsys.readouterr().out
    assert "CLIP_vitg14: ours 0.31" in out and folder_digest(chain["ckpt"]) in out and "c0ffee" in out


def test_a_score_column_traces_to_its_score_file(chain):
    """GenEval and preference columns come from score files (sidrepro score): the cell names that file, the scorer's
    reference model and environment, and the samples it scored."""
    score = Path("scores/tiny-sana--data-free/hpsv2.json")
    score.parent.mkdir(parents=True)
    manifest = chain["samples"] / "manifest.jsonl"
    score.write_text(json.dumps({"metric": "hpsv2", "hpsv2": 0.27, "samples": str(chain["samples"]),
                                 "manifest_sha256": _sha(manifest), "reference": {"model_id": "xswu/HPSv2"},
                                 "env": {"dir": "work/envs/hpsv2", "spec": "workflow/envs/hpsv2.txt"}}))
    write_table(build_table("table1", "v2", [chain["metrics"]], MAPPING, run="smoke", scores=[score]), chain["table"])
    t = trace(chain["table"], "tiny-sana--data-free", "HPSv2")
    assert t["cell"]["ours"] == "0.27" and t["metrics"]["path"] == str(score)
    assert t["samples"]["matches"] and t["scorer"]["reference"] == {"model_id": "xswu/HPSv2"}
    assert t["model"]["checkpoint"]["exists"]  # the same chain behind it: samples -> student -> checkpoint
    assert trace(chain["table"], "tiny-sana--data-free", "FID_coco10k")["metrics"]["path"] == str(chain["metrics"])
    with pytest.raises(ValueError, match="not a score file"):
        score.write_text(json.dumps({"metric": "fid", "fid": 1.0}))  # FID comes from the metrics file, never a score
        build_table("table1", "v2", [chain["metrics"]], MAPPING, scores=[score])

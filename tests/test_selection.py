"""Snapshot selection: the rules, pruning to what a rule may still choose, scoring snapshots while the run trains
(equal to sampling and evaluating the exported snapshot afterwards), and a planted best snapshot reaching the
student, its metrics record and the table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sidrepro.cli import main
from sidrepro.distill.config import resolve_config
from sidrepro.distill.export import export_student
from sidrepro.distill.trainer import train
from sidrepro.selection import (
    SelectionError,
    SnapshotScore,
    check_interval,
    check_protocol,
    check_rule,
    keep_names,
    read_scores,
    select,
    snapshot_root,
)
from sidrepro.teachers.load import load_teacher

PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


def _score(nimg: int, fid: float, clip: float) -> SnapshotScore:
    return SnapshotScore(nimg=nimg, name=f"ckpt-{nimg:010d}", fid=fid, clip=clip, subset="paper10k",
                         protocol="paper", num_images=16)


def test_rules_choose_and_prune_what_cannot_win():
    scores = [_score(4, 5.0, 0.1), _score(8, 1.0, 0.2), _score(12, 3.0, 0.3), _score(16, 1.0, float("nan"))]
    assert select(scores, "best-fid").nimg == 8  # a tie goes to the earlier snapshot
    assert select(scores, "best-clip").nimg == 12  # NaN never wins
    assert select(scores, "last").nimg == 16
    assert keep_names(scores) == {"ckpt-0000000008", "ckpt-0000000012", "ckpt-0000000016"}
    with pytest.raises(SelectionError, match="best-fid, best-clip, last"):
        check_rule("best-fld")
    with pytest.raises(SelectionError, match="paper, clean"):
        check_protocol("coco")
    with pytest.raises(SelectionError, match="longer than the run"):
        check_interval(51.2, 10.0)
    with pytest.raises(SelectionError, match="finite fid"):
        select([_score(4, math.inf, 0.1)], "best-fid")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke workflow's synthetic 16-image COCO folder, prepared as a reference."""
    root = tmp_path_factory.mktemp("coco")
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "synthetic_coco.py"
    spec = importlib.util.spec_from_file_location("synthetic_coco", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    coco = module.build(root / "coco", n=16, seed=0)
    assert main(["coco", "--coco-dir", str(coco), "--out", str(root / "ref")]) == 0
    return root / "ref"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from sidrepro.evaluate.clip_score import tiny_clip_checkpoint

    name, weights = tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))
    return name, str(weights)


def _cfg(prompt_file: Path, kimg: str):
    return resolve_config("tiny-sd3", {"prompts": str(prompt_file), "duration_kimg": kimg, "checkpoint_ticks": "1",
                                       "snapshot_ticks": "1"})


def test_planted_best_middle_snapshot_is_exported_and_reaches_the_table(tiny_zoo, prompt_file, reference, clip,
                                                                        tmp_path):
    run = tmp_path / "run"
    cfg, sources = _cfg(prompt_file, "0.016")  # four ticks of 4 images: snapshots at 4, 8, 12 and 16 images
    planted = {4: (5.0, 0.10), 8: (1.0, 0.30), 12: (3.0, 0.20), 16: (4.0, 0.25)}  # 8: the lowest FID
    seen = []

    def evaluate(view):
        seen.append(view.name)
        assert view.checkpoint.is_dir() and view.world == 1
        fid, clip_score = planted[view.nimg]
        return SnapshotScore(nimg=view.nimg, name=view.name, fid=fid, clip=clip_score, subset="paper10k",
                             protocol="paper", num_images=16)

    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    train(cfg, run, adapter, progress=False, sources=sources, evaluate=evaluate)
    assert [s.nimg for s in read_scores(run)] == [4, 8, 12, 16] and len(seen) == 4
    kept = sorted(p.name for p in (snapshot_root(run) / "checkpoints").iterdir())
    assert kept == ["ckpt-0000000008", "ckpt-0000000016"]  # best FID and CLIP (8), the latest (16): 4, 12 pruned
    # The middle snapshot's generator, not the latest checkpoint's, becomes the student.
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "student"), "--snapshot",
                 str(tiny_zoo["tiny-sd3"]), "--select", "best-fid"]) == 0
    meta = json.loads((tmp_path / "student" / "sidrepro_student.json").read_text())
    assert meta["selection"]["snapshot"] == "ckpt-0000000008" and meta["selection"]["rule"] == "best-fid"
    assert meta["selection"]["last"]["fid"] == 4.0 and meta["images_seen"] == 8
    middle = load_file(snapshot_root(run) / "checkpoints" / "ckpt-0000000008" / "generator.safetensors")
    latest = load_file(run / "checkpoints" / "ckpt-0000000016" / "generator.safetensors")
    student = {}
    for f in (tmp_path / "student" / "transformer").glob("*.safetensors"):
        student.update(load_file(f))
    assert all(torch.equal(student[k], middle[k]) for k in middle)
    assert any(not torch.equal(middle[k], latest[k]) for k in middle)
    assert "rule `best-fid`" in (tmp_path / "student" / "README.md").read_text()
    # Sampled and evaluated like any student: the metrics record names the snapshot and the rule.
    samples = tmp_path / "samples"
    assert main(["sample", "--student", str(tmp_path / "student"), "--reference", str(reference), "--out",
                 str(samples), "--quiet"]) == 0
    out = tmp_path / "metrics" / "tiny-sd3--data-free.json"
    assert main(["evaluate", "--samples", str(samples), "--reference", str(reference), "--out", str(out),
                 "--partial", "--clip-model", clip[0], "--clip-weights", clip[1]]) == 0
    record = json.loads(out.read_text())
    assert record["selection"]["snapshot"] == "ckpt-0000000008" and record["selection"]["kimg"] == 0.008
    from sidrepro.tables import build_table

    rows = build_table("table2", "v2", [out], {"tiny-sd3--data-free": {"table": "table2", "block": "SD3-Medium",
                                                                       "setting": "data-free"}}, run="smoke")
    row = next(r for r in rows if r["model"] == "tiny-sd3--data-free")
    assert row["snapshot_kimg"] == "0.008" and row["selected_by"] == "best-fid on paper10k (paper)"
    assert row["last_snapshot"].startswith("0.016 kimg: FID 4")
    from sidrepro.provenance import format_trace, trace
    from sidrepro.tables import write_table

    table = write_table(rows, tmp_path / "table2.csv")
    traced = trace(table, "tiny-sd3--data-free", "FID_coco10k", lock=tmp_path / "no-dvc.lock")
    assert traced["model"]["selection"]["snapshot"] == "ckpt-0000000008"
    assert "selected   snapshot ckpt-0000000008 (0.008 kimg) by best-fid among 4" in format_trace(traced)
    with pytest.raises(SelectionError, match="unknown selection rule"):
        export_student(run, tiny_zoo["tiny-sd3"], tmp_path / "other", select="best")
    assert not (tmp_path / "other").exists()


def test_in_loop_score_equals_evaluating_the_exported_snapshot(tiny_zoo, prompt_file, reference, clip, tmp_path):
    from sidrepro.evaluate.snapshot_eval import SnapshotEvaluator

    run = tmp_path / "run"
    cfg, sources = _cfg(prompt_file, "0.008")
    evaluator = SnapshotEvaluator(reference, "paper", batch=4, clip=clip)
    train(cfg, run, load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"]), progress=False, sources=sources,
          evaluate=evaluator)
    scores = read_scores(run)
    assert [s.nimg for s in scores] == [4, 8] and all(s.num_images == 16 for s in scores)
    assert not list((snapshot_root(run) / "samples").rglob("*.png"))  # scored, then the images go
    student = export_student(run, tiny_zoo["tiny-sd3"], tmp_path / "student", select="last")
    samples = tmp_path / "samples"
    assert main(["sample", "--student", str(student), "--reference", str(reference), "--out", str(samples),
                 "--batch", "4", "--quiet"]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--samples", str(samples), "--reference", str(reference), "--out", str(out),
                 "--partial", "--clip-model", clip[0], "--clip-weights", clip[1]]) == 0
    record = json.loads(out.read_text())
    assert record["fid"] == pytest.approx(scores[-1].fid, rel=1e-6)
    assert record["clip_score"] == pytest.approx(scores[-1].clip, rel=1e-6)


def test_bad_selection_input_is_named(tiny_zoo, prompt_file, reference, tmp_path, capsys):
    base = ["distill", "--teacher", "tiny-sd3", "--out", str(tmp_path / "run"), "--snapshot",
            str(tiny_zoo["tiny-sd3"]), "--prompts", str(prompt_file), "--quiet", "--reference", str(reference),
            "--set", "duration_kimg=0.008", "--set", "snapshot_ticks=1"]
    assert main([*base, "--select-protocol", "fancy"]) == 2
    assert "unknown selection protocol 'fancy'" in capsys.readouterr().err
    long = [a if a != "snapshot_ticks=1" else "snapshot_ticks=5" for a in base]
    assert main([*long, "--select-protocol", "paper"]) == 2
    assert "longer than the run" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was trained
    run = tmp_path / "plain"
    assert main(["distill", "--teacher", "tiny-sd3", "--out", str(run), "--snapshot", str(tiny_zoo["tiny-sd3"]),
                 "--prompts", str(prompt_file), "--quiet", "--set", "duration_kimg=0.004"]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "s"), "--select", "best-fid"]) == 2
    assert "no scored snapshots" in capsys.readouterr().err


def test_a_scoring_that_would_outlast_the_job_is_done_first_by_the_next_one(tiny_zoo, prompt_file, tmp_path,
                                                                            monkeypatch):
    """Thirty seconds left and no measured scoring yet (estimated at a minute or more): the run stops at the
    snapshot with a checkpoint instead of starting it; the next invocation scores that snapshot before training on,
    with the same generator an uninterrupted run scores."""
    from sidrepro.runstatus import read_status

    calls = []

    def evaluate(view):
        calls.append(view.nimg)
        return SnapshotScore(nimg=view.nimg, name=view.name, fid=10.0 - view.nimg, clip=0.1, subset="paper10k",
                             protocol="paper", num_images=16)

    cfg, sources = _cfg(prompt_file, "0.008")
    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    run = tmp_path / "run"
    monkeypatch.setenv("SIDREPRO_DEADLINE", "+30")
    monkeypatch.setenv("SIDREPRO_STOP_LEAD", "1")
    train(cfg, run, adapter, progress=False, sources=sources, evaluate=evaluate)
    status = read_status(run)
    assert status["state"] == "stopped" and status["nimg"] == 4 and "snapshot is scored" in status["reason"]
    assert calls == [] and read_scores(run) == []
    monkeypatch.delenv("SIDREPRO_DEADLINE")
    train(cfg, run, adapter, progress=False, sources=sources, evaluate=evaluate)
    assert calls == [4, 8] and [s.nimg for s in read_scores(run)] == [4, 8]
    assert read_status(run)["state"] == "finished" and read_status(run)["evaluation_seconds"] >= 0
    whole = tmp_path / "whole"
    train(cfg, whole, adapter, progress=False, sources=sources, evaluate=evaluate)
    for nimg in (4, 8):  # both kept: 4 has the best CLIP (a tie goes to the earlier), 8 the best FID
        name = f"ckpt-{nimg:010d}"
        a = load_file(snapshot_root(run) / "checkpoints" / name / "generator.safetensors")
        b = load_file(snapshot_root(whole) / "checkpoints" / name / "generator.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_clean_protocol_selects_on_heldout_and_reports_on_disjoint_captions(tiny_zoo, prompt_file, clip, tmp_path):
    """Protocol clean: snapshots are scored on the held-out captions, and the chosen one is evaluated on clean30k,
    whose images the held-out subset never contains."""
    from sidrepro.evaluate.reference import prepare_coco
    from sidrepro.evaluate.snapshot_eval import SnapshotEvaluator

    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "synthetic_coco.py"
    spec = importlib.util.spec_from_file_location("synthetic_coco", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    coco = module.build(tmp_path / "coco", n=16, seed=0)
    ref_dir = tmp_path / "ref"
    ref = prepare_coco(coco, ref_dir, subset_sizes={"paper10k": 6, "clean30k": 8, "heldout": 4})
    heldout = {i for _, i, _ in ref.load_subset("heldout")}
    assert len(heldout) == 4 and not heldout & {i for _, i, _ in ref.load_subset("clean30k")}
    run = tmp_path / "run"
    cfg, sources = _cfg(prompt_file, "0.008")
    train(cfg, run, load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"]), progress=False, sources=sources,
          evaluate=SnapshotEvaluator(ref_dir, "clean", batch=4, clip=clip))
    scores = read_scores(run)
    assert [(s.subset, s.protocol, s.num_images) for s in scores] == [("heldout", "clean", 4)] * 2
    student = export_student(run, tiny_zoo["tiny-sd3"], tmp_path / "student", select="best-fid")
    samples = tmp_path / "samples"
    assert main(["sample", "--student", str(student), "--reference", str(ref_dir), "--subset", "clean30k",
                 "--out", str(samples), "--batch", "4", "--quiet"]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--samples", str(samples), "--reference", str(ref_dir), "--protocol", "clean",
                 "--out", str(out), "--partial", "--clip-model", clip[0], "--clip-weights", clip[1]]) == 0
    record = json.loads(out.read_text())
    assert record["protocol_id"].startswith("clean@") and record["num_images"] == 8
    assert (record["selection"]["subset"], record["selection"]["protocol"]) == ("heldout", "clean")
    assert record["selection"]["snapshot"] == select(scores, "best-fid").name


def test_workflow_refuses_an_unknown_selection_rule(tmp_path):
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "workflow/config/smoke.yaml").read_text(encoding="utf-8"))
    cfg["evaluate"]["select"] = {"rule": "best-fdi"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run([snakemake, "-n", f"--configfile={tmp_path / 'bad.yaml'}", "results/table1.csv"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "unknown selection rule 'best-fdi'; valid: best-fid, best-clip, last" in proc.stdout + proc.stderr

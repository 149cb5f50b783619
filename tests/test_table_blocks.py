"""One resolution per table block, score columns only where the chosen paper table version prints them, sweep rows
of a preset value, and the named errors of bad block, resolution and sweep settings (sidrepro/table_rows.py, the
workflow's common.smk and the tables)."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sidrepro.cli import main
from sidrepro.plan.workflow import load_config, model_ids, workflow_jobs
from sidrepro.table_rows import (
    check_config,
    distill_resolution,
    paper_columns,
    row_resolution,
    sample_flags,
    split_sweep,
    sweep_ids,
)
from sidrepro.tables import build_table, read_paper

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "workflow/config/paper.yaml"
SMOKE = REPO / "workflow/config/smoke.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
ROWS = read_paper()


def _config(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-n", "--nolock", "--forceall", "-p", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------- blocks and resolutions

def test_every_flux_row_of_the_paper_config_samples_at_the_blocks_512_px():
    cfg = _config(PAPER)
    flux = ["teacher--flux-dev-512", "flux-dev-512--data-free", "flux-dev-512--data-aided", "baseline--flux-schnell",
            "baseline--flux-turbo-alpha", "baseline--hyper-flux"]
    assert {m: row_resolution(cfg, m) for m in flux} == dict.fromkeys(flux, 512)
    # the baselines' presets are 1024 px: they are told; the teacher's preset is 512: nothing to say
    assert sample_flags(cfg, "baseline--hyper-flux") == "--resolution 512"
    assert sample_flags(cfg, "teacher--flux-dev-512") == ""
    assert distill_resolution(cfg, "flux-dev-512", {}) == {}
    assert row_resolution(cfg, "baseline--flash-sd3") == row_resolution(cfg, "teacher--sd3-medium") == 1024


def test_block_resolution_moves_teacher_students_and_baselines_and_a_row_may_override():
    cfg = _config(PAPER)
    cfg["blocks"] = {"FLUX.1-dev": {"resolution": 1024}}
    cfg["baselines"]["hyper-flux"]["resolution"] = 512
    assert distill_resolution(cfg, "flux-dev-512", {}) == {"resolution": 1024}  # the students train there
    assert sample_flags(cfg, "teacher--flux-dev-512") == "--resolution 1024"
    assert sample_flags(cfg, "baseline--flux-schnell") == ""  # its preset is 1024
    assert sample_flags(cfg, "baseline--hyper-flux") == "--resolution 512"  # the row's own override
    with pytest.raises(ValueError, match=r"resolution=512 \(a distill override\).*1024 px"):
        distill_resolution(cfg, "flux-dev-512", {"resolution": 512})


def test_distill_jobs_of_the_plan_get_the_blocks_resolution():
    cfg = load_config(SMOKE)
    cfg["blocks"] = {"SD3-Medium": {"resolution": 128}}
    from sidrepro.plan.workflow import distill_overrides

    assert distill_overrides(cfg, "tiny-sd3", "data-free")["resolution"] == 128
    assert "resolution" not in distill_overrides(cfg, "tiny-sana", "data-free")


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(blocks={"FLUX.1-pro": {"resolution": 512}}),
     "config blocks: unknown block 'FLUX.1-pro'; the blocks of this config's rows: FLUX.1-dev, SANA 0.6B"),
    (lambda c: c["teachers"]["tiny-sd3"].update(block="SD4"), "config teachers.tiny-sd3: unknown block 'SD4' of "
                                                              "table2 (paper v2); valid: FLUX.1-dev, SD3-Medium"),
    (lambda c: c.update(blocks={"SANA 0.6B (RF)": {"resolution": 80}}),
     "config teachers.tiny-sana (block 'SANA 0.6B (RF)'): resolution 80 is not one the sana family can take (a "
     "multiple of 32 px"),
    (lambda c: c["baselines"]["tiny-flux-schnell"].update(resolution=520),
     "config baselines.tiny-flux-schnell.resolution: resolution 520 is not one the flux family can take (a multiple "
     "of 16 px"),
    (lambda c: c.update(sweep={"tiny-sd3": {"cfg_eval_real": [3.5]}}),
     "config sweep.tiny-sd3: 'cfg_eval_real' is not a preset value that can be swept; allowed: guidance, steps"),
    (lambda c: c.update(sweep={"tiny-sd5": {"guidance": [3.5]}}),
     "config sweep: 'tiny-sd5' is not a teacher or baseline of this config"),
    (lambda c: c.update(sweep={"tiny-sd3": {"guidance": [3.5, 7.0]}}),
     "config sweep.tiny-sd3.guidance: 7 is the preset's own value, which the row teacher--tiny-sd3 already measures"),
    (lambda c: c.update(sweep={"tiny-sana-sprint-4step": {"steps": [2.5]}}),
     "config sweep.tiny-sana-sprint-4step.steps: 2.5 is not a whole number >= 1"),
])
def test_bad_block_resolution_and_sweep_settings_get_named_errors(change, message):
    cfg = copy.deepcopy(_config(SMOKE))
    change(cfg)
    with pytest.raises(ValueError) as err:
        check_config(cfg, ROWS)
    assert message in str(err.value), str(err.value)


def test_rows_of_one_block_at_different_presets_need_a_block_setting():
    cfg = _config(SMOKE)
    cfg["baselines"] = {"tiny-sana-sprint-4step": {"table": "table1", "block": "SANA TrigFlow 0.6B", "steps": 4}}
    cfg["teachers"]["tiny-sd35"] = {"table": "table2", "block": "SD3-Medium", "settings": ["data-free"]}
    from sidrepro.teachers.registry import TEACHERS

    assert TEACHERS["tiny-sd35"].resolution == TEACHERS["tiny-sd3"].resolution  # same preset: one block, fine
    check_config(cfg, ROWS)
    cfg["baselines"]["tiny-flux-schnell"] = {"table": "table2", "block": "FLUX.1-dev"}
    cfg["baselines"]["tiny-flux-lora"] = {"table": "table2", "block": "FLUX.1-dev", "row": "hyper"}
    check_config(cfg, ROWS)  # both at their 64 px preset
    import dataclasses

    from sidrepro.teachers import registry

    wide = dataclasses.replace(registry.BASELINES["tiny-flux-lora"], resolution=128)
    registry.BASELINES["tiny-flux-lora"] = wide
    try:
        with pytest.raises(ValueError, match=r"baselines of block 'FLUX.1-dev' \(table2\) sample at different "
                                             r"resolutions \(tiny-flux-lora 128 px, tiny-flux-schnell 64 px\)"):
            check_config(cfg, ROWS)
        cfg["blocks"] = {"FLUX.1-dev": {"resolution": 64}}
        check_config(cfg, ROWS)
        assert sample_flags(cfg, "baseline--tiny-flux-lora") == "--resolution 64"
    finally:
        registry.BASELINES["tiny-flux-lora"] = dataclasses.replace(wide, resolution=64)


# ---------------------------------------------------------------- score columns

def test_score_columns_follow_the_paper_table_version():
    assert paper_columns(ROWS, "table2", "v2") == ["fid", "clip_score", "aesthetic", "hpsv2", "image_reward",
                                                   "pickscore"]
    assert paper_columns(ROWS, "table1", "v2") == ["fid", "clip_score", "geneval", "aesthetic", "hpsv2",
                                                   "image_reward", "pickscore"]
    assert paper_columns(ROWS, "table2", "v1") == ["fid", "clip_score", "geneval"]


def test_plan_runs_geneval_only_for_table1_and_preference_scores_only_in_v2():
    cfg = load_config(PAPER)
    jobs = workflow_jobs(cfg)
    geneval = {j.wc["model"] for j in jobs.values() if j.rule == "geneval_score"}
    assert geneval == set(model_ids(cfg, "table1")) and len(geneval) == 16  # Table 2 of v2 has no GenEval column
    assert len([j for j in jobs.values() if j.rule == "score"]) == 34 * 4
    cfg["tables"]["version"] = "v1"  # v1 prints GenEval in both tables and no preference scores
    jobs = workflow_jobs(cfg)
    assert len([j for j in jobs.values() if j.rule == "geneval_score"]) == 34
    assert not [j for j in jobs.values() if j.rule == "score"]


def test_paper_dry_run_has_no_geneval_job_for_table2_and_flux_baselines_at_512():
    proc = _dry_run("results/table2.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule geneval_" not in proc.stdout and "geneval.json" not in proc.stdout
    assert "rule score:" in proc.stdout
    assert not re.search(r"sidrepro sample --teacher flux-dev-512 [^\n]*--resolution", proc.stdout)
    flux = ["baseline--flux-schnell", "baseline--flux-turbo-alpha", "baseline--hyper-flux"]
    if "--resolution" in _sample_options():
        found = re.findall(r"sidrepro sample --baseline (flux-schnell|flux-turbo-alpha|hyper-flux) .*?"
                           r"--resolution 512 --on-plan-change", proc.stdout)
        assert sorted({f"baseline--{b}" for b in found}) == flux
    else:  # never passed where argparse would read it as --resolution-out; the dry run says which rows it misses
        assert "--resolution 512" not in proc.stdout
        warning = next(line for line in proc.stderr.splitlines() if "has no --resolution option" in line)
        assert warning.endswith(": " + ", ".join(flux))


def _sample_options() -> list[str]:
    import argparse

    from sidrepro.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [o for a in sub.choices["sample"]._actions for o in a.option_strings]


# ---------------------------------------------------------------- sweeps

def test_sweep_ids_are_wildcard_and_file_safe_and_name_their_value():
    cfg = _config(SMOKE)
    ids = sweep_ids(cfg)
    assert ids == ["teacher--tiny-sd3@guidance=3.5", "teacher--tiny-sd3@guidance=4.5", "teacher--tiny-sd3@guidance=5.5"]
    assert all(re.fullmatch(r"[\w.@=-]+", m) for m in ids)
    assert split_sweep(ids[0]) == ("teacher--tiny-sd3", ("guidance", "3.5"))
    assert sample_flags(cfg, ids[0]) == "--guidance 3.5"
    assert sweep_ids(cfg, "table1") == []
    cfg["sweep"] = {"tiny-sana-sprint-4step": {"steps": [2, 8]}}
    assert sample_flags(cfg, "baseline--tiny-sana-sprint-4step@steps=2") == "--steps 2"


def _record(folder: Path, model: str, fid: float, guidance: float, resolution: int) -> Path:
    samples = folder / "samples" / model
    samples.mkdir(parents=True)
    (samples / "manifest.jsonl").write_text(json.dumps({"prompt_id": 0, "resolution": resolution}) + "\n")
    path = folder / "metrics" / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fid": fid, "clip_score": 0.3, "num_images": 16, "complete": False,
                                "protocol_id": "paper@1", "steps": 4, "guidance": guidance,
                                "sample_manifest": str(samples / "manifest.jsonl")}))
    return path


def test_sweep_table_has_one_row_per_value_next_to_the_paper_row(tmp_path):
    entry = {"table": "table2", "block": "SD3-Medium", "setting": "teacher", "resolution": 64}
    mapping = {"teacher--tiny-sd3": entry, **{f"teacher--tiny-sd3@guidance={g}": {**entry, "sweep": f"guidance={g}"}
                                              for g in ("3.5", "4.5")}}
    files = [_record(tmp_path, "teacher--tiny-sd3", 40.0, 7.0, 64)]
    files += [_record(tmp_path, f"teacher--tiny-sd3@guidance={g}", 30.0 + float(g), float(g), 64)
              for g in ("3.5", "4.5")]
    out = tmp_path / "sweep.csv"
    assert main(["table", "--table", "table1", "table2", "--measured-only", "--metrics", *map(str, files),
                 "--map", json.dumps(mapping), "--run", "smoke", "--out", str(out)]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame["model"]) == ["teacher--tiny-sd3", "teacher--tiny-sd3@guidance=3.5",
                                    "teacher--tiny-sd3@guidance=4.5"]
    assert list(frame["sweep"]) == ["", "guidance=3.5", "guidance=4.5"]
    assert list(frame["source"]) == ["paper", "sweep", "sweep"]
    assert list(frame["guidance_ours"]) == [7, 3.5, 4.5] and set(frame["resolution_ours"]) == {64}
    assert set(frame["FID_coco10k_paper"]) == {frame["FID_coco10k_paper"][0]}  # the teacher row's paper number
    assert frame["row"][1].endswith("[teacher] [guidance=3.5]")
    assert frame["FID_coco10k_diff"][1] == pytest.approx(33.5 - frame["FID_coco10k_paper"][0])


def test_table_says_resolution_and_steps_and_refuses_samples_at_another_resolution(tmp_path):
    entry = {"table": "table2", "block": "FLUX.1-dev", "setting": "baseline-distilled", "row": "schnell",
             "resolution": 512}
    path = _record(tmp_path, "baseline--flux-schnell", 20.0, 0.0, 512)
    rows = build_table("table2", "v2", [path], {"baseline--flux-schnell": entry})
    row = next(r for r in rows if r["model"])
    assert (row["resolution_ours"], row["steps_ours"], row["resolution_paper"]) == ("512", "4", "unknown")
    with open(tmp_path / "t.csv", "w", newline="") as f:  # every row has every column, pandas reads it
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert "resolution_ours" in pd.read_csv(tmp_path / "t.csv").columns
    with pytest.raises(ValueError, match="generated at 512 px but its table block samples at 1024 px"):
        build_table("table2", "v2", [path], {"baseline--flux-schnell": {**entry, "resolution": 1024}})


def test_bad_sweep_fails_the_dry_run_naming_the_allowed_keys(tmp_path):
    cfg = _config(SMOKE)
    cfg["sweep"] = {"tiny-sd3": {"cfg_eval_real": [3.5]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = _dry_run(f"--configfile={path}", "results/sweep.csv")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr  # Snakemake prints a parse-time error on stdout
    assert "'cfg_eval_real' is not a preset value that can be swept; allowed: guidance, steps" in out

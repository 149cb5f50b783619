"""The Snakemake workflow: lint, the paper dry run's job counts, schema errors that name the key, the paper-vs-ours
table builder, and (slow) the smoke chain for table 1 on tiny models in a copy of the workflow."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidrepro.cli import main
from sidrepro.tables import METRICS, build_table

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SMOKE = "workflow/config/smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _snakemake(*args: str, cwd: Path = REPO, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def _job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.mark.parametrize("configfile", [None, SMOKE])
def test_lint_is_clean(configfile):
    args = ["--lint"] + ([f"--configfile={configfile}"] if configfile else [])
    proc = _snakemake(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_paper_dry_run_lists_every_job_without_data():
    proc = _snakemake("-n", "--nolock", "--forceall", "results/table1.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 4 SANA teachers x 2 settings; 16 models (8 students, 4 teachers, 4 SANA-Sprint baselines) x 16 shards, for
    # COCO and for GenEval; one job each fetches the dataset, makes the prompt file from its captions, downloads
    # COCO-2014 val and fetches the protocol's CLIP weights; GenEval and 4 preference scorers per model, with their
    # environments and weights.
    assert _job_counts(proc.stdout) == {
        "fetch": 8, "fetch_dataset": 1, "prompts_from_shards": 1, "fetch_clip": 1, "fetch_coco": 1, "distill": 8,
        "export": 8, "coco_reference": 1, "sample": 256, "merge_samples": 16, "evaluate": 16, "sample_grid": 16,
        "training_curves": 8, "fid_curve": 8, "geneval_env": 1, "geneval_metadata": 1, "geneval_fetch_models": 1,
        "geneval_prompts": 1, "geneval_sample": 256, "geneval_merge": 16, "geneval_score": 16, "scorer_env": 2,
        "scorer_weights": 4, "score": 64, "table": 1, "total": 712}
    proc = _snakemake("-n", "--nolock", "--forceall")
    counts = _job_counts(proc.stdout)
    assert counts["distill"] == 16 and counts["fetch"] == 18 and counts["evaluate"] == 34 and counts["table"] == 2
    assert counts["fetch_dataset"] == counts["prompts_from_shards"] == counts["fetch_clip"] == 1


def test_smoke_dry_run_uses_only_the_smoke_config():
    proc = _snakemake("-n", "--nolock", "--forceall", f"--configfile={SMOKE}", "results/table1.csv",
                      "results/table2.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = _job_counts(proc.stdout)
    assert "fetch" not in counts and counts["zoo"] == 1 and counts["distill"] == 4 and counts["sample"] == 16


@pytest.mark.parametrize(("change", "named"), [
    (lambda c: c.update(bogus_key=1), "bogus_key"),
    (lambda c: c["sample"].update(num_shards="many"), "num_shards"),
    (lambda c: c["teachers"]["tiny-sd3"].update(setings=["data-free"]), "setings"),
])
def test_bad_config_gives_a_schema_error_naming_the_key(change, named, tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / SMOKE).read_text(encoding="utf-8"))
    change(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = _snakemake("-n", "--nolock", f"--configfile={path}")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Error validating config file" in out and named in out, out


def _metrics(folder: Path, model: str, fid: float, clip: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}.json"
    path.write_text(json.dumps({"fid": fid, "clip_score": clip, "num_images": 16, "complete": False,
                                "protocol_id": "paper@1", "steps": 4}), encoding="utf-8")
    return path


def test_table_rows_paper_vs_ours(tmp_path):
    mapping = {"sd3--data-free": {"table": "table2", "block": "SD3-Medium", "setting": "data-free"},
               "flux--data-aided": {"table": "table2", "block": "FLUX.1-dev", "setting": "data-aided"},
               "baseline--schnell": {"table": "table2", "block": "FLUX.1-dev", "setting": "baseline-distilled",
                                     "row": "schnell"}}
    files = [_metrics(tmp_path, "sd3--data-free", 23.05, 0.340), _metrics(tmp_path, "flux--data-aided", 30.0, 0.3),
             _metrics(tmp_path, "baseline--schnell", 23.42, 0.345)]
    rows = build_table("table2", "v2", files, mapping, run="smoke")
    paper_rows = [r for r in rows if r["source"] == "paper"]
    assert len(paper_rows) == 17 and all(r["run"] == "smoke" for r in rows)
    sd3 = next(r for r in rows if r["model"] == "sd3--data-free")
    assert sd3["row"] == "SiD-DiT (SD3-Medium)" and sd3["FID_coco10k_paper"] == "22.05"
    assert float(sd3["FID_coco10k_diff"]) == pytest.approx(1.0) and sd3["GenEval_overall_paper"] == ""
    assert len(sd3["provenance"]) == 12 and sd3["protocol"] == "paper@1" and sd3["num_images"] == "16"
    assert next(r for r in rows if r["model"] == "baseline--schnell")["row"] == "Flux-Schnell"
    ours_only = [r for r in rows if r["source"] == "ours only"]
    assert [r["model"] for r in ours_only] == ["flux--data-aided"] and ours_only[0]["FID_coco10k_paper"] == ""
    unmeasured = next(r for r in rows if r["row"] == "Hyper-FLUX")
    assert unmeasured["FID_coco10k_paper"] == "25.44" and unmeasured["FID_coco10k_ours"] == ""
    ambiguous = {"baseline--schnell": {**mapping["baseline--schnell"], "row": ""}}
    with pytest.raises(ValueError, match="matches 3 paper rows"):
        build_table("table2", "v2", [files[2]], ambiguous)


def test_table_command_and_unknown_table(tmp_path, capsys):
    files = [_metrics(tmp_path, "m", 25.0, 0.33)]
    mapping = json.dumps({"m": {"block": "SANA 0.6B (RF)", "setting": "teacher"}})
    out = tmp_path / "t1.csv"
    assert main(["table", "--table", "table1", "--version", "v1", "--metrics", *map(str, files), "--map", mapping,
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 12 and rows[0]["model"] == "m" and rows[0]["run"] == "paper"
    assert main(["table", "--table", "table9", "--map", mapping, "--out", str(out)]) == 2
    assert "valid: table1, table2" in capsys.readouterr().err


@pytest.fixture(scope="session")
def separate_envs():
    """The GenEval and scorer venvs the smoke tables need, built before the timed workflow run (the first time on a
    machine the GenEval one compiles mmcv-full for about 20 minutes; afterwards they are reused)."""
    from sidrepro.envs import EnvError, ensure_env, env_dir_for

    for name in ("geneval", "hpsv2", "image_reward"):
        spec = REPO / "workflow" / "envs" / f"{name}.txt"
        try:
            ensure_env(spec, env_dir_for(spec))
        except EnvError as exc:
            pytest.skip(f"the {name} environment cannot be built here: {exc}")


@pytest.mark.slow
def test_smoke_chain_for_table1(tmp_path, separate_envs):
    """Zoo -> synthetic data -> distil (both settings) -> export -> sample -> evaluate, GenEval and the preference
    scores -> table1 with every column filled, in a copy of the workflow; a second run has nothing to do."""
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    args = ["--cores", "2", "results/table1.csv", f"--configfile={SMOKE}"]
    proc = _snakemake(*args, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "results" / "table1.csv").open(encoding="utf-8")))
    measured = [r for r in rows if r["model"]]
    assert {r["model"] for r in measured} == {"tiny-sana--data-free", "tiny-sana--data-aided", "teacher--tiny-sana",
                                              "baseline--tiny-sana-sprint-4step"}
    assert all(r["run"] == "smoke" and r["num_images"] == "16" and float(r["FID_coco10k_ours"]) > 0 for r in measured)
    ours = [f"{c}_ours" for c in METRICS]  # every metric column, and every row at the block's one resolution
    assert len(ours) == 7 and all(r[c] for r in measured for c in ours), [(r["model"], r) for r in measured]
    assert {r["resolution_ours"] for r in measured} == {"64"} and all(r["steps_ours"] for r in measured)
    again = _snakemake("-n", *args, cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # The report: one self-contained HTML file with the table, a sample grid per row and the training curves.
    report = _snakemake(*args, "--report", "report.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for name in ["table1.csv", "Training curves", "Samples", "FID per snapshot", "tiny-sana--data-free.png",
                 "tiny-sana--data-aided.png", "teacher--tiny-sana.png", "baseline--tiny-sana-sprint-4step.png"]:
        assert name in html, name
    # FID of every snapshot each run scored as it trained, against the images seen (data-aided counts the data-free
    # run's too); the table's student row reports the circled best-FID one and names the rule.
    students = {r["model"]: r for r in measured if r["setting"] in ("data-free", "data-aided")}
    for setting, kimgs in (("data-free", [0.004, 0.008]), ("data-aided", [0.012, 0.016, 0.020, 0.024])):
        rows = list(csv.DictReader((tmp_path / f"work/smoke/report/fid/tiny-sana--{setting}.csv").open()))
        assert [float(r["kimg"]) for r in rows] == kimgs and all(float(r["fid"]) > 0 for r in rows), rows
        best = min(rows, key=lambda r: (float(r["fid"]), float(r["kimg"])))
        assert [r["selected"] for r in rows].count("1") == 1 and best["selected"] == "1"
        row = students[f"tiny-sana--{setting}"]
        assert float(row["snapshot_kimg"]) == float(best["kimg"]), (row, best)
        assert row["selected_by"] == "best-fid on paper10k (paper)" and row["last_snapshot"].startswith(
            f"{kimgs[-1]:g} kimg")


def test_fetch_of_a_gated_teacher_fails_with_the_licence_message(tmp_path):
    """The paper config's fetch rule against a hub where the teacher's licence was not accepted: the job fails and its
    log carries the doctor's message (the page to accept the licence at, how to log in)."""
    from fake_hub import FakeHub, FakeRepo

    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    repo_id = "stabilityai/stable-diffusion-3-medium-diffusers"
    files = {"model_index.json": b"{}", "transformer/config.json": b"{}"}
    env = {k: v for k, v in ENV.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with FakeHub({repo_id: FakeRepo(files, gated=True, gate_api=True)}) as hub:
        env["HF_ENDPOINT"] = hub.url
        proc = subprocess.run([SNAKEMAKE, "work/paper/fetched/sd3-medium.done", "--cores", "1"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    log = (tmp_path / "work/paper/logs/fetch/sd3-medium.log").read_text()
    assert f"https://huggingface.co/{repo_id}" in log and "accept the licence" in log and "hf auth login" in log
    assert not (tmp_path / "work/paper/fetched/sd3-medium.done").exists()
    assert not (tmp_path / "env/hub-lock.json").exists()


def test_unknown_table_target_fails_naming_the_valid_tables(tmp_path):
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    proc = _snakemake("results/table9.csv", "--cores", "1", f"--configfile={SMOKE}", cwd=tmp_path)
    assert proc.returncode != 0
    log = (tmp_path / "work/smoke/logs/table/table9.log").read_text()
    assert "unknown table 'table9'; valid: table1, table2" in log
    assert not (tmp_path / "results/table9.csv").exists()

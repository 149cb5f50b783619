"""Time limits that cost nothing: a distillation longer than its job's time limit stops ahead of the limit with a
checkpoint, requeues its SLURM job and finishes by itself, with the weights of an uninterrupted run; a stopped run
never counts as finished. The first tests drive `sidrepro distill` and `sidrepro sample` with a deadline given by
``SIDREPRO_DEADLINE``; the last one runs the workflow through the SLURM profile on a real one-node controller
(tests/slurm_cluster.py) with one-minute jobs."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from slurm_cluster import Cluster, slurm_cluster

from sidrepro.distill.checkpoint import export_weights, find_latest
from sidrepro.runstatus import read_status
from sidrepro.selection import read_scores
from sidrepro.stopping import (
    EXIT_CONTINUE,
    REQUERY_S,
    LeadTooShortError,
    Stopper,
    auto_lead,
    checkpoint_seconds_from,
    slurm_end_time,
)

REPO = Path(__file__).resolve().parents[1]
SIDREPRO = str(Path(sys.executable).parent / "sidrepro")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SIDREPRO_STOP", "SIDREPRO_DEAD"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------- the stop rules (no scheduler)

def test_lead_is_twice_a_checkpoint_and_an_iteration_plus_margin(tmp_path):
    stopper = Stopper(tmp_path, checkpoint_bytes=int(10e9), env={})
    assert stopper.lead == pytest.approx(auto_lead(10e9 / 0.5e9, 0.0))  # estimated before the first checkpoint
    stopper.observe_checkpoint(7.0)
    stopper.observe_iteration(3.0)
    stopper.observe_iteration(2.0)
    assert stopper.lead == pytest.approx(2 * 7.0 + 2 * 3.0 + 60.0)


def test_a_lead_shorter_than_a_measured_checkpoint_write_is_refused(tmp_path):
    with pytest.raises(LeadTooShortError, match="SIDREPRO_STOP_LEAD=30 s is shorter than writing one checkpoint"):
        Stopper(tmp_path, checkpoint_bytes=0, measured_checkpoint_s=95.0, env={"SIDREPRO_STOP_LEAD": "30"})
    assert Stopper(tmp_path, checkpoint_bytes=0, measured_checkpoint_s=95.0,
                   env={"SIDREPRO_STOP_LEAD": "200"}).lead == 200.0


def test_deadline_follows_the_scheduler_and_is_reread(tmp_path):
    now, end = [1000.0], [5000.0]
    stopper = Stopper(tmp_path, checkpoint_bytes=0, env={"SLURM_JOB_ID": "7", "SIDREPRO_STOP_LEAD": "100"},
                      clock=lambda: now[0], end_time=lambda job: end[0])
    assert stopper.deadline() == 4900.0 and stopper.reason() == ""
    end[0] = 9000.0  # an administrator extends the limit: seen at the next query, REQUERY_S later
    now[0] = 1000.0 + REQUERY_S - 1
    assert stopper.deadline() == 4900.0
    now[0] = 4950.0
    assert stopper.reason() == "" and stopper.deadline() == 8900.0
    now[0] = 8901.0
    assert stopper.reason() == "time limit"


def test_only_the_querying_rank_watches_the_clock(tmp_path):
    stopper = Stopper(tmp_path, checkpoint_bytes=0, query_scheduler=False,
                      env={"SLURM_JOB_ID": "7", "SIDREPRO_DEADLINE": "1"})
    assert stopper.deadline() is None and stopper.reason() == ""
    (tmp_path / "STOP").touch()  # every rank honours the stop file (and the first one removes it)
    assert stopper.reason() == "stop file" and not (tmp_path / "STOP").exists()


def test_slurm_end_time_reads_squeue_in_local_time():
    def fake(cmd, **kw):
        assert cmd == ["squeue", "-h", "-j", "42", "-o", "%e"]
        return subprocess.CompletedProcess(cmd, 0, "2026-12-06T02:51:28\n", "")

    assert slurm_end_time("42", run=fake) == time.mktime((2026, 12, 6, 2, 51, 28, 0, 0, -1))
    unlimited = subprocess.CompletedProcess([], 0, "N/A\n", "")
    assert slurm_end_time("42", run=lambda cmd, **kw: unlimited) is None


def test_a_checkpoint_write_cut_by_the_job_end_lengthens_the_next_lead():
    """The last stop's write began 40 s before its job ended and never completed: the next invocation assumes at
    least twice that, so its stop checkpoint fits (a lead that stays too short would never make progress)."""
    cut = {"checkpoint_seconds": 12.0, "checkpoint_started": 1000.0, "job_end": 1040.0}
    assert checkpoint_seconds_from(cut) == 80.0
    done = {**cut, "checkpoint_started": 0.0}  # completed writes clear the mark
    assert checkpoint_seconds_from(done) == 12.0
    assert checkpoint_seconds_from({}) == 0.0


def test_a_job_too_short_to_train_is_refused_not_requeued_forever(tmp_path):
    stopper = Stopper(tmp_path, checkpoint_bytes=0, env={"SIDREPRO_DEADLINE": str(time.time() + 20),
                                                         "SIDREPRO_STOP_LEAD": "30"})
    with pytest.raises(LeadTooShortError, match="leaves no time to train"):
        stopper.check_time_left()


# ---------------------------------------------------------------- the commands, with a deadline

def _distill(out: Path, prompts: Path, zoo: Path, kimg: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [SIDREPRO, "distill", "--teacher", "tiny-sana", "--out", str(out), "--prompts", str(prompts),
           "--snapshot", str(zoo / "tiny-sana"), "--set", f"duration_kimg={kimg}", "--set", "checkpoint_ticks=100",
           "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _prompt_file(folder: Path) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.mark.slow
def test_deadline_stops_resume_to_the_uninterrupted_weights(tmp_path, tiny_zoo):
    """Invocations stopped by their deadline (exit 75, state stopped, a checkpoint at the stop though the periodic
    ones are off), then one that finishes: the weights equal one uninterrupted invocation's, bit for bit. Each
    deadline leaves about a third of the training time that the uninterrupted run measured, after loading."""
    zoo = tiny_zoo["tiny-sana"].parent
    prompts = _prompt_file(tmp_path)
    whole = _distill(tmp_path / "whole", prompts, zoo, "0.064", _env())
    assert whole.returncode == 0, whole.stderr[-3000:]
    status = read_status(tmp_path / "whole")
    assert status["state"] == "finished"
    train_s = status["updated"] - status["started"]

    run, lead, stops = tmp_path / "run", 2.0, 0
    for _ in range(10):
        budget = f"+{lead + train_s / 3:.1f}"  # seconds after loading
        proc = _distill(run, prompts, zoo, "0.064", _env(SIDREPRO_DEADLINE=budget, SIDREPRO_STOP_LEAD=str(lead)))
        status = read_status(run)
        if proc.returncode == 0:
            break
        assert proc.returncode == EXIT_CONTINUE, proc.stderr[-3000:]
        assert status["state"] == "stopped" and status["reason"] == "time limit", status
        assert status["nimg"] < 64 and status["checkpoint"] == f"ckpt-{status['nimg']:010d}"
        stops += 1
    assert stops >= 2 and read_status(run)["state"] == "finished", (stops, read_status(run))
    for name in ("generator", "fake"):
        a, b = export_weights(find_latest(run), name), export_weights(find_latest(tmp_path / "whole"), name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_failed_invocation_is_recorded_as_failed_not_stopped(tmp_path, tiny_zoo):
    """An invocation that fails (here: an empty prompt file) says so in status.json and history.jsonl, and exits
    with an error, not with 75: a failure must never be requeued as if the run only needed more time."""
    (tmp_path / "empty.txt").write_text("\n")
    run = tmp_path / "run"
    run.mkdir()
    proc = _distill(run, tmp_path / "empty.txt", tiny_zoo["tiny-sana"].parent, "0.008", _env())
    assert proc.returncode not in (0, EXIT_CONTINUE), proc.stderr[-2000:]
    status = read_status(run)
    assert status["state"] == "failed" and "prompt" in status["reason"], status
    assert json.loads((run / "history.jsonl").read_text().splitlines()[-1])["state"] == "failed"


@pytest.mark.slow
def test_a_sampling_shard_stops_at_its_deadline_and_a_rerun_finishes_it(tmp_path, tiny_zoo):
    captions = tmp_path / "captions.jsonl"
    rows = (f'{{"prompt_id": {i}, "image_id": {i}, "caption": "{PROMPTS[i % 4]}"}}\n' for i in range(24))
    captions.write_text("".join(rows))
    out = tmp_path / "samples"
    cmd = [SIDREPRO, "sample", "--teacher", "tiny-sana", "--snapshot", str(tiny_zoo["tiny-sana"]), "--captions",
           str(captions), "--out", str(out), "--batch", "4", "--quiet"]
    first = subprocess.run(cmd, env=_env(SIDREPRO_DEADLINE="+3", SIDREPRO_STOP_LEAD="0.5"),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == EXIT_CONTINUE, first.stdout + first.stderr[-3000:]
    assert "stopped (time limit)" in first.stdout and not (out / "manifest.jsonl").exists()
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 24


# ---------------------------------------------------------------- through the SLURM profile, one-minute jobs

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def status_nimg(run: Path) -> int:
    return int(read_status(run)["nimg"])


def _watch_stamp(status_file: Path, stamp: Path, stop: threading.Event, seen: list[str]) -> None:
    """Record every state the run passes through, and fail loudly if a stamp exists while the run is stopped."""
    while not stop.is_set():
        state = read_status(status_file.parent).get("state", "")
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        if state == "stopped" and stamp.exists():
            seen.append("STAMP-WHILE-STOPPED")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_run_longer_than_its_job_finishes_through_the_workflow_by_requeues(cluster: Cluster, tmp_path, tiny_zoo):
    """One-minute jobs (the profile's cap), a distillation of about three jobs' training (sized from this machine's
    measured speed): each job stops ahead of its limit with a checkpoint and requeues itself, and the last one
    finishes. Nobody reruns anything."""
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    profile = tmp_path / "workflow/profiles/slurm/config.yaml"
    profile.write_text(profile.read_text().replace("runtime: &runtime 240", "runtime: &runtime 1"))
    cfg = yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text(encoding="utf-8"))
    cfg["teachers"] = {"tiny-sana": {**cfg["teachers"]["tiny-sana"], "settings": ["data-free"], "teacher_row": False}}
    cfg.pop("sweep", None)  # the smoke sweep varies tiny-sd3, which this run leaves out
    cfg["baselines"] = {}
    lead_s, job_train_s = 10, 60 - 10 - 15  # a one-minute job: the stop lead, ~15 s to start and load
    calibrate = _distill(tmp_path / "calibrate", _prompt_file(tmp_path), tiny_zoo["tiny-sana"].parent, "0.04",
                         _env())
    assert calibrate.returncode == 0, calibrate.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "calibrate/log.jsonl").read_text().splitlines()]
    images_per_s = rows[0]["nimg"] / statistics.median(r["sec_per_iter"] for r in rows)
    kimg = round(2.8 * job_train_s * images_per_s / 1000, 3)
    # Two scored snapshots (the middle and the end): a scoring that would run into a job's end waits for the next.
    half = max(1, math.ceil(kimg / float(cfg["distill"]["set"].get("tick_kimg", 0.004)) / 2))
    cfg["distill"]["set"] = {**cfg["distill"]["set"], "duration_kimg": kimg, "checkpoint_ticks": 1000,
                             "snapshot_ticks": half}
    cfg["data"]["prompts"] = {"list": PROMPTS}
    cfg["zoo"] = str(tiny_zoo["tiny-sana"].parent)  # the session's zoo: the workflow finds it built
    cfg["resources"] = {"distill": {"gpu": 1}}
    (tmp_path / "tl.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = tmp_path / "work/smoke/runs/tiny-sana/data-free"
    stamp = run.with_suffix(".done")

    env = {**cluster.env, "OMP_NUM_THREADS": "1", "SIDREPRO_STOP_LEAD": str(lead_s)}
    stop, states = threading.Event(), []
    watcher = threading.Thread(target=_watch_stamp, args=(run / "status.json", stamp, stop, states), daemon=True)
    watcher.start()
    cmd = ["timeout", "-s", "KILL", "900", SNAKEMAKE, "--profile", "workflow/profiles/slurm", str(stamp.relative_to(
        tmp_path)), "--configfile=tl.yaml", "--slurm-init-seconds-before-status-checks=2"]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    finally:
        stop.set()
        watcher.join()
    log = (tmp_path / "work/smoke/logs/distill/tiny-sana-data-free.log")
    assert proc.returncode == 0, proc.stderr[-4000:] + (log.read_text()[-3000:] if log.exists() else "") + \
        cluster.logs()
    print(f"{kimg} kimg; states: {states}")
    assert "STAMP-WHILE-STOPPED" not in states
    assert stamp.exists() and read_status(run)["state"] == "finished"

    # The scheduler's record: one job, run three or more times (requeued by the stops), the last run completed.
    out = cluster.run("sacct", "-D", "-X", "--parsable2", "--noheader", "--format=JobID,State,Comment,Elapsed")
    runs = [line.split("|") for line in out.splitlines() if "rule_distill" in line]
    print(*runs, sep="\n")
    assert [r[1] for r in runs].count("REQUEUED") >= 2 and runs[-1][1] == "COMPLETED", runs
    assert len({r[0] for r in runs}) == 1  # requeued, not resubmitted
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["state"] for h in history] == ["stopped"] * (len(history) - 1) + ["finished"], history
    assert len(history) >= 3 and all(h["reason"].startswith("time limit") for h in history[:-1]), history
    scores = read_scores(run)  # the middle snapshot and the last, each scored once
    assert len(scores) == 2 and scores[-1].nimg == status_nimg(run), scores
    assert {h["job_id"] for h in history} == {runs[0][0]}  # every invocation ran in the one requeued job

    # The same distillation in one uninterrupted invocation ends with the same weights, bit for bit.
    whole = tmp_path / "whole"
    cmd = [SIDREPRO, "distill", "--teacher", "tiny-sana", "--out", str(whole), "--prompts",
           str(tmp_path / "work/smoke/data/prompts.txt"), "--snapshot", str(tiny_zoo["tiny-sana"]), "--quiet",
           *(a for k, v in cfg["distill"]["set"].items() for a in ("--set", f"{k}={v}"))]
    ref = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    for name in ("generator", "fake"):
        a, b = export_weights(find_latest(run), name), export_weights(find_latest(whole), name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

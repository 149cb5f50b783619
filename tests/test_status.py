"""`sidrepro status` reads run and sample folders, written in the real formats, into states and progress: hand-made
folders for every state and for damaged files, and a real tiny distillation watched while it trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from sidrepro import status as st
from sidrepro.atomic import write_json_atomic
from sidrepro.cli import main
from sidrepro.distill import checkpoint
from sidrepro.evaluate import sampling
from sidrepro.evaluate.fid_curve import write_curve

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"} | {"OMP_NUM_THREADS": "1"}
NOW = time.time()


# ------------------------------------------------------------------------------------------------ folder builders


def _config(run: Path, duration_kimg: float, batch: int = 4) -> None:
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / "config.json", {"config": {"teacher": "tiny-sana", "setting": "data-free",
                                                       "duration_kimg": duration_kimg, "batch": batch},
                                            "sources": {}, "world_size": 1})


def _log(run: Path, nimgs: list[int], images_per_sec: float, *, sec_per_iter: float = 0.5) -> None:
    with (run / "log.jsonl").open("a") as f:
        for n in nimgs:  # the keys RunLog.step writes
            f.write(json.dumps({"loss_fake": 1.0, "loss_sid": 2.0, "grad_norm_fake": 3.0, "steps": 2.0,
                                "bad_iters": 0.0, "sec_per_iter": sec_per_iter, "nimg": n, "kimg": n / 1000,
                                "images_per_sec": images_per_sec, "peak_mem_gib": 0.5}) + "\n")


def _checkpoint(run: Path, nimg: int) -> Path:
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    return checkpoint.save_checkpoint(run, nimg, models={"generator": net}, optimizers={"generator": opt},
                                      state={"nimg": nimg}, keep=10)


def _status_json(run: Path, state: str, nimg: int, total: int, *, updated: float, reason: str = "",
                 ckpt: str = "", images_per_sec: float = 2.0) -> None:
    write_json_atomic(run / "status.json", {"state": state, "nimg": nimg, "total_nimg": total,
                                            "images_per_sec": images_per_sec, "updated": updated,
                                            "started": updated - 100, "reason": reason, "checkpoint": ckpt,
                                            "checkpoint_seconds": 0.1, "deadline": None, "job_id": "4711"})


def _sample_folder(folder: Path, num_images: int, num_shards: int, rows_per_shard: dict[int, int]) -> list[int]:
    """A plan as `sidrepro sample` writes it and manifests with the first ``rows_per_shard[k]`` rows of shard k."""
    ids = list(range(100, 100 + num_images))
    folder.mkdir(parents=True)
    (folder / st.PLAN_FILE).write_text(json.dumps({"format": 1, "num_shards": num_shards, "seed": 0,
                                                   "resolution_out": 64, "model": {}, "num_images": num_images,
                                                   "captions_sha256": "x", "prompt_ids": ids, "source": {}}))
    for k, n in rows_per_shard.items():
        with (folder / sampling.manifest_name(k, num_shards)).open("w") as f:
            for p in ids[k::num_shards][:n]:
                (folder / f"{p:06d}.png").write_bytes(b"png")
                f.write(json.dumps({"prompt_id": p, "image_id": p, "caption": "c", "file": f"{p:06d}.png"}) + "\n")
    return ids


# ------------------------------------------------------------------------------------------------ unit level


def test_file_names_are_those_the_writers_use():
    assert st.CHECKPOINT_MARKER == checkpoint.MARKER and st.CHECKPOINT_FORMAT == checkpoint.FORMAT
    assert st.PLAN_FILE == sampling.PLAN_FILE and st.MERGED_FILE == sampling.MERGED_FILE
    assert st._MANIFEST_RE.match(sampling.manifest_name(3, 16))


def test_running_run_shows_progress_eta_last_good_checkpoint_and_snapshot(tmp_path):
    run = tmp_path / "runs" / "tiny-sana" / "data-free"
    _config(run, duration_kimg=0.4)
    _checkpoint(run, 32)
    damaged = _checkpoint(run, 40)
    with (damaged / "generator.safetensors").open("r+b") as f:  # truncated by a crash or a full disk
        f.truncate(10)
    _log(run, [4 * i for i in range(1, 11)], images_per_sec=8.0)
    (run / "grids").mkdir()
    for n in (8, 16):
        (run / "grids" / f"grid-{n:010d}.png").write_bytes(b"png")
    write_curve([{"checkpoint": "ckpt-0000000016", "kimg": 0.016, "num_images": 8, "fid": 80.5, "subset": "s",
                  "protocol": "paper"},
                 {"checkpoint": "ckpt-0000000032", "kimg": 0.032, "num_images": 8, "fid": 61.25, "subset": "s",
                  "protocol": "paper"}], tmp_path / "report" / "fid" / "tiny-sana--data-free.csv")

    status = st.root_status(tmp_path)
    (r,) = status.runs
    assert (r.name, r.state, r.nimg, r.total_nimg, r.images_per_sec) == ("tiny-sana/data-free", "running", 40, 400,
                                                                           8.0)
    assert r.percent == pytest.approx(10.0)
    assert r.eta_seconds == pytest.approx((400 - 40) / 8.0)
    assert r.checkpoint == "ckpt-0000000032" and 0 <= r.checkpoint_age < 60  # the damaged newer one is skipped
    assert r.grid == "grid-0000000016.png" and (r.fid, r.fid_kimg) == (61.25, 0.032)
    assert _status_cli(tmp_path)["runs"][0] == {**asdict(r), "percent": r.percent,
                                                 "checkpoint_age": pytest.approx(r.checkpoint_age, abs=30),
                                                 "grid_age": pytest.approx(r.grid_age, abs=30),
                                                 "heartbeat_age": pytest.approx(r.heartbeat_age, abs=30)}
    table = st.format_table(status)
    line = next(s for s in table.splitlines() if s.startswith("tiny-sana/data-free"))
    for text in ("running", "0.04/0.4", "10%", "8", "45s", "ckpt-0000000032", "FID 61.25 @0.032kimg",
                 "grid-0000000016.png"):
        assert text in line, (text, line)


@pytest.mark.parametrize("said, age, expect, note", [
    ("running", 5, "running", ""),
    ("running", 3600, "no heartbeat", "nothing written for 1h00m"),
    ("stopped", 3600, "stopped", "will continue (time limit)"),
    ("failed", 3600, "failed", "CUDA out of memory"),
    ("finished", 3600, "finished", ""),
])
def test_status_json_decides_the_state_and_a_silent_running_job_has_no_heartbeat(tmp_path, said, age, expect, note):
    run = tmp_path / "run"
    _config(run, duration_kimg=0.1)
    _log(run, [4, 8, 12], images_per_sec=4.0)
    reason = {"stopped": "time limit", "failed": "CUDA out of memory"}.get(said, "")
    _status_json(run, said, 12, 100, updated=time.time(), reason=reason)
    # Reading `age` seconds after the last write, as a login node would while the job is silent.
    r = st.read_run(run, name="t/s", now=time.time() + age)
    assert r.state == expect and r.job_id == "4711"
    assert note in st._run_note(r, time.time() + age)
    assert (r.eta_seconds is None) == (expect == "finished")
    if expect != "finished":
        assert r.eta_seconds == pytest.approx((100 - 12) / 4.0)


def test_a_growing_log_is_a_heartbeat_between_checkpoints(tmp_path):
    run = tmp_path / "run"
    _config(run, duration_kimg=1.0)
    _status_json(run, "running", 0, 1000, updated=time.time() - 3600, images_per_sec=0.0)  # written at start
    _log(run, [4, 8, 12, 16], images_per_sec=2.5)  # written just now
    r = st.read_run(run, name="t/s")
    assert r.state == "running" and r.nimg == 16 and r.images_per_sec == 2.5  # the log is the fresher source


def test_folders_without_status_json_are_judged_from_log_checkpoints_and_stamp(tmp_path):
    runs = tmp_path / "runs" / "tiny-sd3"
    # Finished by the trainer's own count: the log reached the target and the final checkpoint exists.
    _config(runs / "data-free", duration_kimg=0.008)
    _log(runs / "data-free", [4, 8], images_per_sec=6.0)
    _checkpoint(runs / "data-free", 8)
    # The workflow's done stamp, written after `sidrepro distill` exited with success.
    _config(runs / "data-aided", duration_kimg=0.016)
    _log(runs / "data-aided", [4, 8], images_per_sec=6.0)
    (runs / "data-aided.done").write_text("{}")
    # Unfinished and silent for an hour: its job may have been killed.
    _config(runs / "other", duration_kimg=0.4)
    _log(runs / "other", [4, 8], images_per_sec=4.0)
    _checkpoint(runs / "other", 8)
    status = st.root_status(tmp_path, now=time.time() + 3600)
    got = {r.name: r for r in status.runs}
    assert got["tiny-sd3/data-free"].state == "finished" and got["tiny-sd3/data-free"].eta_seconds is None
    assert got["tiny-sd3/data-aided"].state == "finished"
    other = got["tiny-sd3/other"]
    assert other.state == "no heartbeat" and other.eta_seconds == pytest.approx(392 / 4.0)
    assert "(1m38s)" in st.format_table(status)  # compute time still needed, not a finishing time
    assert st.read_run(tmp_path / "runs" / "nope" / "data-free", name="nope").state == "not started"


def test_damaged_and_missing_files_give_a_readable_line(tmp_path, capsys):
    run = tmp_path / "runs" / "tiny-sana" / "data-free"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"config": {"duration_kimg": ')
    (run / "status.json").write_text("not json")
    (run / "log.jsonl").write_text('{"nimg": 4, "images_per_sec": 2.0}\ngarbage\n{"nimg": 8, "images_per_s')
    (run / "checkpoints" / "ckpt-0000000004").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-0000000004" / "COMPLETE").write_text("{")
    (run / "checkpoints" / "ckpt-0000000008").mkdir()  # killed before its marker
    (tmp_path / "report" / "fid").mkdir(parents=True)
    (tmp_path / "report" / "fid" / "tiny-sana--data-free.csv").write_text("what,ever\n1,2\n")
    bad = tmp_path / "samples" / "teacher--tiny-sana"
    bad.mkdir(parents=True)
    (bad / st.PLAN_FILE).write_text("[1, 2")
    (bad / sampling.manifest_name(0, 2)).write_text('{"prompt_id": 1}\n{"prompt_')
    (tmp_path / "samples" / "empty").mkdir()

    status = st.root_status(tmp_path)
    (r,) = status.runs
    assert (r.state, r.nimg, r.total_nimg, r.checkpoint) == ("running", 4, None, "")
    assert any("config.json" in n for n in r.notes) and any("status.json" in n for n in r.notes)
    assert any("tiny-sana--data-free.csv" in n for n in r.notes)
    samples = {s.model: s for s in status.samples}
    s = samples["teacher--tiny-sana"]
    assert (s.images, s.num_shards, s.planned, s.state) == (1, 2, None, "sampling")
    assert any(st.PLAN_FILE in n for n in s.notes)
    assert samples["empty"].state == "not started"
    assert main(["status", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "config.json: unreadable" in out and "plan.json: unreadable" in out
    assert main(["status", "--root", str(tmp_path / "absent")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_sample_folders_count_shards_images_and_merge(tmp_path):
    folder = tmp_path / "samples" / "tiny-sana--data-free"
    _sample_folder(folder, num_images=10, num_shards=2, rows_per_shard={0: 5, 1: 2})
    with (folder / sampling.manifest_name(1, 2)).open("a") as f:
        f.write('{"prompt_id": 1')  # a torn row of the image in flight
    s = st.read_samples(folder, model="m")
    assert (s.state, s.shards_done, s.num_shards, s.images, s.planned, s.merged) == ("sampling", 1, 2, 7, 10, False)
    assert st.read_samples(folder, model="m", now=time.time() + 3600).state == "idle"
    # The workflow's stamp counts a shard as done too (its manifest is what the shard job left).
    (folder / ".shard-1-of-2.done").touch()
    assert st.read_samples(folder, model="m").state == "sampled"
    (folder / ".shard-1-of-2.done").unlink()
    _sample_folder(tmp_path / "full", num_images=10, num_shards=2, rows_per_shard={0: 5, 1: 5})
    assert st.read_samples(tmp_path / "full", model="m").state == "sampled"
    sampling.merge_manifests(tmp_path / "full")
    s = st.read_samples(tmp_path / "full", model="m")
    assert (s.state, s.shards_done, s.images, s.merged) == ("merged", 2, 10, True)
    line = next(x for x in st.format_table(st.root_status(tmp_path)).splitlines() if x.startswith("tiny-sana--"))
    assert line.split()[:5] == ["tiny-sana--data-free", "sampling", "1/2", "7/10", "70%"]


def test_config_mode_lists_every_run_and_sample_folder_the_config_asks_for(tmp_path):
    config = yaml.safe_load((REPO / "workflow" / "config" / "smoke.yaml").read_text())
    config["root"] = str(tmp_path)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _config(tmp_path / "runs" / "tiny-sana" / "data-free", duration_kimg=0.008)
    _log(tmp_path / "runs" / "tiny-sana" / "data-free", [4], images_per_sec=2.0)
    status = st.config_status(st.load_config(path))
    runs = {r.name: r for r in status.runs}
    assert list(runs) == ["tiny-sana/data-free", "tiny-sana/data-aided", "tiny-sd3/data-free", "tiny-sd3/data-aided"]
    assert runs["tiny-sana/data-free"].state == "running" and runs["tiny-sana/data-free"].nimg == 4
    # Not started: the config's own target (distill.set, then set_by_setting).
    assert (runs["tiny-sd3/data-aided"].state, runs["tiny-sd3/data-aided"].total_nimg) == ("not started", 16)
    assert runs["tiny-sd3/data-free"].total_nimg == 8
    assert [s.model for s in status.samples] == [
        "tiny-sana--data-free", "tiny-sana--data-aided", "teacher--tiny-sana", "tiny-sd3--data-free",
        "tiny-sd3--data-aided", "teacher--tiny-sd3", "baseline--tiny-sana-sprint-4step", "baseline--tiny-flux-schnell"]
    assert all(s.state == "not started" and s.num_shards == 2 for s in status.samples)
    (tmp_path / "bad.yaml").write_text("teachers: {}\n")
    with pytest.raises(ValueError, match="'root'"):
        st.load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="--configfile"):
        st.load_config(tmp_path / "absent.yaml")


# ------------------------------------------------------------------------------------------------ the command


_CLI = """
import contextlib, io, json, sys
from sidrepro.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["status", "--root", sys.argv[1], "--json"])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "status": json.loads(buf.getvalue())}))
"""


def _status_cli(root: Path) -> dict:
    """`sidrepro status --root ROOT --json` in a fresh interpreter, with whether it imported torch."""
    out = subprocess.run([sys.executable, "-c", _CLI, str(root)], capture_output=True, text=True, env=ENV,
                         timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["rc"] == 0 and not result["torch"], "status must run without torch (login nodes, live jobs)"
    return result["status"]


def test_watch_redraws_until_ctrl_c(tmp_path):
    _config(tmp_path / "runs" / "t" / "s", duration_kimg=0.1)
    proc = subprocess.Popen([sys.executable, "-m", "sidrepro.cli", "status", "--root", str(tmp_path), "--watch",
                             "0.2", "--json"], stdout=subprocess.PIPE, text=True, env=ENV)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    frames = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and len(frames) >= 2
    assert frames[-1]["now"] > frames[0]["now"] and frames[0]["runs"][0]["total_nimg"] == 100


@pytest.mark.slow
def test_status_of_a_real_tiny_run_while_it_trains(tiny_zoo, tmp_path):
    root = tmp_path / "work"
    run = root / "runs" / "tiny-sana" / "data-free"
    root.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube on a table\ntwo cats asleep\na lighthouse at dusk\na bowl of fruit\n")
    # 100 iterations of 4 images (about a minute on one thread): the test stops it long before the end.
    cmd = [sys.executable, "-m", "sidrepro.cli", "distill", "--teacher", "tiny-sana", "--out", str(run),
           "--snapshot", str(tiny_zoo["tiny-sana"]), "--prompts", str(prompts), "--quiet",
           "--set", "duration_kimg=0.4", "--set", "checkpoint_ticks=2", "--set", "snapshot_ticks=2"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never showed progress and a checkpoint"
            status = _status_cli(root)
            if status["runs"] and status["runs"][0]["nimg"] and status["runs"][0]["checkpoint"]:
                break
            time.sleep(1)
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        table = st.format_table(st.root_status(root))
    finally:
        proc.terminate()  # what a scheduler sends ahead of a time limit
        proc.wait(timeout=60)
    print("\n" + table)
    (r,) = status["runs"]
    by_nimg = {row["nimg"]: row for row in rows}
    assert r["state"] == "running" and r["name"] == "tiny-sana/data-free" and r["total_nimg"] == 400
    assert r["nimg"] in by_nimg and r["nimg"] > 0
    if not (run / "status.json").exists():  # progress then comes from the log row itself
        assert r["images_per_sec"] == by_nimg[r["nimg"]]["images_per_sec"]
    assert r["eta_seconds"] == pytest.approx((400 - r["nimg"]) / r["images_per_sec"])
    assert r["percent"] == pytest.approx(100 * r["nimg"] / 400)
    ckpt_nimg = int(r["checkpoint"].removeprefix("ckpt-"))
    assert 0 < ckpt_nimg <= r["nimg"] and ckpt_nimg % 8 == 0  # every second tick of 4 images
    assert (run / "checkpoints" / r["checkpoint"] / "COMPLETE").exists()
    assert "tiny-sana/data-free  running" in table
    if (run / "status.json").exists():  # a trainer that writes status.json says it stopped and will continue
        after = st.root_status(root).runs[0]
        assert after.state == "stopped" and after.reason, after

"""Checkpoints: round trip, kill safety under real SIGKILLs, retention and corruption handling, FSDP2 sharding."""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fsdp_checkpoint_worker import make_pair
from torch import nn
from torchrun_workers import run_workers

from sidrepro.distill.checkpoint import CheckpointError, export_weights, find_latest, load_checkpoint, save_checkpoint


def _pair(seed: int = 0, width: int = 16):
    """A generator (bf16) / fake-score (fp32) MLP pair with their Adam optimizers."""
    torch.manual_seed(seed)
    models = {
        "generator": nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, 4)).to(torch.bfloat16),
        "fake": nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, 4)),
    }
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.0, 0.999)) for n, m in models.items()}
    return models, opts


def _train(models, opts, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        for name, m in models.items():
            (m(x.to(next(m.parameters()).dtype)).float() - x).square().mean().backward()
            opts[name].step()
            opts[name].zero_grad()


def _weights(models) -> dict:
    return {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else
                                        (_same(a[k], b[k]) if isinstance(a[k], dict) else a[k] == b[k]) for k in a)


def _save(run_dir: Path, nimg: int, models, opts, **kw) -> Path:
    return save_checkpoint(run_dir, nimg, models=models, optimizers=opts, state={"nimg": nimg}, **kw)


def test_round_trip_restores_weights_fp32_optimizer_state_rng_and_state(tmp_path):
    models, opts = _pair()
    _train(models, opts, 3)
    state = {"nimg": 96, "iteration": 3, "config_hash": "abc", "loss_ema": {"fake": 0.5, "generator": -1.25}}
    path = save_checkpoint(tmp_path, 96, models=models, optimizers=opts, state=state)
    assert path == tmp_path / "checkpoints" / "ckpt-0000000096" and find_latest(tmp_path, verify=True) == path
    assert {p.name for p in path.iterdir()} == {"COMPLETE", "generator.safetensors", "fake.safetensors", "rng.pt",
                                                 "optim-generator.pt", "optim-fake.pt", "state.json"}
    saved_weights = _weights(models)
    saved_opt = {n: copy.deepcopy(o.state_dict()) for n, o in opts.items()}
    draws = (torch.rand(3), random.random(), np.random.rand(3))
    # optimizer state on disk is fp32 even for the bf16 model; weights keep the model dtype
    on_disk = torch.load(path / "optim-generator.pt", weights_only=True)["state_dict"]["state"]
    assert {v.dtype for s in on_disk.values() for v in s.values()} == {torch.float32}
    assert saved_opt["generator"]["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert {v.dtype for v in export_weights(path, "generator").values()} == {torch.float32}
    _train(models, opts, 2, seed=1)  # the uninterrupted run goes on, for comparison with the resumed one
    continued = _weights(models)

    fresh, fresh_opts = _pair(seed=1)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    assert load_checkpoint(path, models=fresh, optimizers=fresh_opts) == state
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]
    assert np.array_equal(np.random.rand(3), draws[2])
    assert _same(_weights(fresh), saved_weights)
    for name, opt in fresh_opts.items():
        assert _same(opt.state_dict(), saved_opt[name])
    _train(fresh, fresh_opts, 2, seed=1)
    assert _same(_weights(fresh), continued)


def _kill_pair():
    models = {"big": nn.Linear(640, 640), "small": nn.Linear(64, 8)}  # ~1.6 MB of weights, ~4.9 MB per checkpoint
    return models, {n: torch.optim.Adam(m.parameters()) for n, m in models.items()}


def _check_encodes_nimg(path: Path) -> int:
    """Load ``path`` into fresh modules; every value must encode the checkpoint's nimg."""
    models, opts = _kill_pair()
    nimg = load_checkpoint(path, models=models, optimizers=opts)["nimg"]
    assert path.name == f"ckpt-{nimg:010d}"
    for name, m in models.items():
        for p in m.parameters():
            assert torch.all(p == nimg) and torch.all(opts[name].state[p]["exp_avg"] == -nimg)
    return nimg


def _save_forever(run_dir: Path, ready) -> None:
    """Child process: resume from the latest checkpoint like a real run, then save as fast as it can."""
    torch.set_num_threads(1)
    models, opts = _kill_pair()
    for m in models.values():
        m(torch.randn(1, m.in_features)).sum().backward()
    for o in opts.values():
        o.step()
    latest = find_latest(run_dir)
    nimg = load_checkpoint(latest, models=models, optimizers=opts)["nimg"] if latest else 0
    ready.set()
    while True:
        nimg += 1
        with torch.no_grad():  # every value encodes nimg, so a mixed-up checkpoint cannot go unnoticed
            for name, m in models.items():
                for p in m.parameters():
                    p.fill_(nimg)
                    opts[name].state[p]["exp_avg"].fill_(-nimg)
        save_checkpoint(run_dir, nimg, models=models, optimizers=opts, state={"nimg": nimg}, keep=2)


def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    # fork: the child inherits the imported torch, so each restart costs milliseconds instead of seconds
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    ckdir, last, interrupted = tmp_path / "checkpoints", 0, 0
    for _ in range(6):
        ready = ctx.Event()
        child = ctx.Process(target=_save_forever, args=(tmp_path, ready), daemon=True)
        child.start()
        try:
            assert ready.wait(30), "the saving child did not start"
            deadline = time.monotonic() + 30
            while not any(int(n.name[5:]) > last for n in ckdir.glob("ckpt-??????????")):  # progress first
                assert child.is_alive() and time.monotonic() < deadline, "the saving child saved nothing"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.2))  # then SIGKILL it somewhere in its save loop
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
        assert child.exitcode == -signal.SIGKILL
        interrupted += any(".tmp-" in p.name or ".del-" in p.name for p in ckdir.iterdir())
        # every folder with a final name is complete and intact: half-written ones never get that name
        finals = sorted(p for p in ckdir.iterdir() if "." not in p.name)
        assert finals and find_latest(tmp_path, verify=True) == finals[-1]
        nimgs = [_check_encodes_nimg(p) for p in finals]
        assert nimgs[-1] >= last
        last = nimgs[-1]
    assert interrupted >= 1  # some kills did land inside a save (in practice most do)


def test_retention_keeps_newest_and_never_the_just_saved_one(tmp_path, caplog):
    models, opts = _pair()
    for nimg in range(1, 6):
        _save(tmp_path, nimg, models, opts, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-0000000004", "ckpt-0000000005"]
    # a continuation from an older checkpoint: newer folders are left alone (with a warning), the new one is kept
    with caplog.at_level(logging.WARNING):
        path = _save(tmp_path, 3, models, opts, keep=1)
    assert path.is_dir() and (tmp_path / "checkpoints" / "ckpt-0000000005").is_dir()
    assert "ckpt-0000000005" in caplog.text
    # saving the same nimg again replaces it
    assert _save(tmp_path, 3, models, opts, keep=1) == path and find_latest(tmp_path, verify=True).name.endswith("5")


def test_leftover_temp_folders_are_ignored_and_removed(tmp_path):
    models, opts = _pair()
    good = _save(tmp_path, 10, models, opts)
    # a save killed after writing COMPLETE but before the rename, and a deletion killed half-way
    tmp = good.with_name("ckpt-0000000020.tmp-0123abcd")
    shutil.copytree(good, tmp)
    trash = good.with_name("ckpt-0000000005.del-89abcdef")
    trash.mkdir()
    assert find_latest(tmp_path) == good
    _save(tmp_path, 30, models, opts)
    assert not tmp.exists() and not trash.exists()


def test_corrupt_newest_falls_back_with_a_warning(tmp_path, caplog):
    models, opts = _pair()
    older = _save(tmp_path, 10, models, opts)
    newest = _save(tmp_path, 20, models, opts)
    # same size, broken header: sizes match, only the loader or verify=True notices
    data = bytearray((newest / "generator.safetensors").read_bytes())
    data[:8] = b"\xff" * 8
    (newest / "generator.safetensors").write_bytes(bytes(data))
    assert find_latest(tmp_path) == newest
    with pytest.raises(CheckpointError, match=r"ckpt-0000000020.*generator\.safetensors.*corrupt"):
        load_checkpoint(newest, models=models, optimizers=opts)
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path, verify=True) == older
    assert "ckpt-0000000020" in caplog.text and "sha256" in caplog.text
    # a truncated .pt is caught by the size check; a same-size garbled one by the loader
    pt = newest / "optim-fake.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path) == older
    assert "ckpt-0000000020" in caplog.text and "truncated" in caplog.text
    pt = older / "optim-fake.pt"
    pt.write_bytes(b"\0" * pt.stat().st_size)
    with pytest.raises(CheckpointError, match=r"ckpt-0000000010.*optim-fake\.pt is unreadable"):
        load_checkpoint(older, models=models, optimizers=opts)
    # no COMPLETE at all
    (older / "COMPLETE").unlink()
    assert find_latest(tmp_path) is None


def test_mismatched_models_name_the_folder_and_the_keys(tmp_path):
    models, opts = _pair()
    path = _save(tmp_path, 10, models, opts)
    other, other_opts = _pair(width=16)
    other["fake"] = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 4))
    other_opts["fake"] = torch.optim.Adam(other["fake"].parameters())
    before = _weights(other)
    with pytest.raises(CheckpointError, match=r"ckpt-0000000010.*'fake'.*missing \['4\.bias', '4\.weight'\]"):
        load_checkpoint(path, models=other, optimizers=other_opts)
    assert _same(_weights(other), before)  # nothing was loaded half-way
    with pytest.raises(CheckpointError, match=r"ckpt-0000000010.*not given: \['fake'\]"):
        load_checkpoint(path, models={"generator": models["generator"]}, optimizers={"generator": opts["generator"]})
    with pytest.raises(CheckpointError, match="no model 'teacher'"):
        export_weights(path, "teacher")
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 11, models=models, optimizers=opts, state={"bad": object()})
    assert json.loads((path / "COMPLETE").read_text())["nimg"] == 10


def _torchrun(mode: str, run_dir: Path) -> None:
    run_workers("fsdp_checkpoint_worker.py", mode, str(run_dir))


def test_fsdp2_sharded_checkpoint_resumes_exactly(tmp_path):
    _torchrun("save", tmp_path)
    _torchrun("resume", tmp_path)
    first, second = torch.load(tmp_path / "save.pt"), torch.load(tmp_path / "resume.pt")
    assert first["failing_saves"] == [True, True, True]  # one rank failing made every rank raise, no hang
    assert first["state_empty_after_save"]  # saving before the first step left the optimizers untouched
    assert second["wrong_model_set"]
    assert _same(second["at_save"], first["at_save"])
    assert all(torch.equal(a, b) for a, b in zip(first["rand"], second["rand"], strict=True))
    assert not torch.equal(first["rand"][0], first["rand"][1])  # per-rank RNG streams, each restored
    assert _same(second["final"], first["final"])  # the same 2 steps after the resume give the same weights
    # the never-used layer has no Adam state before the save and none after the load (4 of 6 tensors have)
    assert first["opt_state_params"] == second["opt_state_params"] == {"generator": 4, "fake": 4}

    path = find_latest(tmp_path, verify=True)
    assert {p.name for p in path.iterdir()} == {"COMPLETE", "dcp", "rng-0.pt", "rng-1.pt", "state.json"}
    for name, full in first["at_save"].items():
        assert _same(export_weights(path, name), {k: v.float() for k, v in full.items()})
    # the sharded checkpoint also loads into plain modules in one process (another world size)
    models = make_pair(seed=3)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.0, 0.999)) for n, m in models.items()}
    assert load_checkpoint(path, models=models, optimizers=opts) == {"iteration": 3}
    assert _same(_weights(models), first["at_save"])
    assert {n: len(o.state) for n, o in opts.items()} == {"generator": 4, "fake": 4}
    assert float(next(iter(opts["generator"].state.values()))["step"]) == 3.0
    # the checkpoint of the untrained pair has no optimizer state, and loading it leaves none
    untrained = tmp_path / "checkpoints" / "ckpt-0000000000"
    assert load_checkpoint(untrained, models=models, optimizers=opts) == {"iteration": 0}
    assert not any(o.state for o in opts.values())

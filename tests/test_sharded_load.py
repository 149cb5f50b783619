"""Sharded loading and streamed export: every rank builds, allocates and reads only its shard of each network, the
result is what ``from_pretrained`` gives, a 2-process run trains to the same weights as with the former loading, and
the export writes the bytes ``save_pretrained`` writes, a few tensors at a time."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import diffusers
import pytest
import torch
from torchrun_workers import run_workers

from sidrepro.distill.checkpoint import export_weights
from sidrepro.distill.config import resolve_config
from sidrepro.distill.sharded_load import load_network
from sidrepro.distill.stream_export import write_transformer
from sidrepro.distill.tensor_files import TensorFiles, write_safetensors
from sidrepro.distill.trainer import train
from sidrepro.teachers.load import load_teacher

PROMPTS = ["a red cube on a table", "two cats asleep", "a lighthouse at dusk", "a bowl of fruit"]


def _torchrun(mode: str, out: Path, zoo: Path, *extra: str) -> list[dict]:
    run_workers("sharded_load_worker.py", mode, str(out), str(zoo), *extra, timeout=300)
    return json.loads((out / f"{mode}.json").read_text())


@pytest.fixture(scope="module")
def zoo_root(tiny_zoo) -> Path:
    return tiny_zoo["tiny-sd3"].parent


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    return export_weights(ckpt, name)


@pytest.mark.slow
def test_every_family_loads_sharded_as_from_pretrained_reading_only_its_rows(zoo_root, tmp_path):
    """Two gloo ranks, every zoo family in fp32 and bf16: gathered weights and buffers equal ``from_pretrained``'s
    (value and dtype), the velocity is the same tensor, each rank read exactly its rows and holds about half of
    a network; the memory model's networks term is rank 0's tensors to the byte (asserted in the worker)."""
    rows = _torchrun("families", tmp_path, zoo_root)
    for key in rows[0]:
        mine = [r[key]["mine"] for r in rows]
        full = rows[0][key]["full"]
        # About half each (rows rounded up to the ranks, buffers whole); never a whole network on one rank.
        assert all(m < 0.6 * full for m in mine if "sd3" not in key), (key, mine, full)
        assert all(m < full for m in mine), (key, mine, full)
        # The largest single read: half of a parameter (its rows), or a buffer, which every rank holds whole.
        half = rows[0][key]["largest_param"] // 2 + 4 * 1024
        assert all(r[key]["largest_read"] <= max(half, r[key]["largest_buffer"]) for r in rows), key


@pytest.mark.slow
def test_two_rank_run_trains_to_the_weights_of_the_former_loading(zoo_root, prompt_file, tmp_path):
    """The trainer with sharded loading and with the former full-copy loading, 2 gloo ranks, 2 iterations: the
    generator and fake network end bit for bit equal. The run's sharded checkpoint then seeds a data-aided
    generator through ``init_from`` (each rank reads its shard): equal to the checkpoint's weights."""
    rows = _torchrun("train", tmp_path, zoo_root, str(prompt_file))
    new, old = Path(rows[0]["new"]), Path(rows[0]["old"])
    for name in ("generator", "fake"):
        a, b = _weights(new, name), _weights(old, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    teacher = load_teacher("tiny-sd3", zoo_root / "tiny-sd3").load_transformer().state_dict()
    assert any(not torch.equal(a[k], teacher[k]) for k in a)  # it did train
    assert _torchrun("init", tmp_path, zoo_root, str(tmp_path / "new"))[0]["nimg"] == 8
    # A single-process run's checkpoint (safetensors, read by row ranges) seeds a sharded generator too.
    cfg, _ = resolve_config("tiny-sd3", {"prompts": str(prompt_file), "duration_kimg": "0.004", "snapshot_ticks": "0"})
    train(cfg, tmp_path / "one", load_teacher("tiny-sd3", zoo_root / "tiny-sd3"), progress=False)
    assert _torchrun("init", tmp_path, zoo_root, str(tmp_path / "one"))[0]["nimg"] == 4


def _old_export(ckpt: Path, cls, config: dict, out: Path, **kw) -> None:
    net = cls.from_config(config)
    net.load_state_dict(export_weights(ckpt, "generator"))
    net.save_pretrained(out, safe_serialization=True, **kw)


@pytest.mark.parametrize("sharded", [False, True])
def test_streamed_export_writes_the_bytes_save_pretrained_writes(zoo_root, prompt_file, tmp_path, sharded):
    """From a single-process checkpoint and from the 2-rank DCP one: config, weights (single file, and split
    into shards with their index), byte for byte what loading the weights into a model and ``save_pretrained``
    wrote; ``from_pretrained`` loads it."""
    if sharded:
        rows = _torchrun("train", tmp_path, zoo_root, str(prompt_file))
        ckpt = Path(rows[0]["new"])
    else:
        cfg, _ = resolve_config("tiny-flux", {"prompts": str(prompt_file), "duration_kimg": "0.004",
                                              "snapshot_ticks": "0"})
        ckpt = train(cfg, tmp_path / "run", load_teacher("tiny-flux", zoo_root / "tiny-flux"), progress=False)
    teacher = zoo_root / ("tiny-sd3" if sharded else "tiny-flux")
    cls = diffusers.SD3Transformer2DModel if sharded else diffusers.FluxTransformer2DModel
    config = cls.load_config(teacher / "transformer")
    want = export_weights(ckpt, "generator")
    for i, kw in enumerate(({}, {"max_shard_size": "100KB"})):
        old, new = tmp_path / f"saved-{i}", tmp_path / f"streamed-{i}"
        _old_export(ckpt, cls, config, old, **kw)
        write_transformer(ckpt, "generator", config, cls, new, group_bytes=50_000, **kw)
        names = sorted(os.listdir(old))
        assert names == sorted(os.listdir(new))
        assert all(filecmp.cmp(old / n, new / n, shallow=False) for n in names), names
        if kw:
            assert len(names) > 3 and "diffusion_pytorch_model.safetensors.index.json" in names
        else:
            assert names == ["config.json", "diffusion_pytorch_model.safetensors"]
        net = cls.from_pretrained(new)
        assert all(torch.equal(net.state_dict()[k], want[k]) for k in want)


def test_safetensors_are_read_by_rows_and_written_a_group_at_a_time(tmp_path):
    """The reader returns any row range (converting dtype) and counts what it read; the writer asks for at most
    ``group_bytes`` at a time (or one tensor) and writes what ``safetensors`` writes."""
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(10, 3, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "n": torch.arange(5), "s": torch.tensor(2.5), "e": torch.zeros(0, 4)}
    asked: list[int] = []

    def fetch(names: list[str]) -> dict[str, torch.Tensor]:
        asked.append(sum(tensors[n].numel() * tensors[n].element_size() for n in names))
        return {n: tensors[n] for n in names}

    path = tmp_path / "x.safetensors"
    write_safetensors(path, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}, fetch,
                      metadata={"format": "pt"}, group_bytes=48)
    assert path.read_bytes() == save(tensors, metadata={"format": "pt"})
    assert max(asked) <= 120 and len(asked) >= 3  # "w" alone is 120 bytes, over the 48-byte group
    files = TensorFiles([path])
    out = torch.empty(4, 3, dtype=torch.float64)
    files.read_rows("w", 5, out)
    assert torch.equal(out, tensors["w"][5:9].double()) and files.bytes_read == 4 * 3 * 4
    scalar = torch.empty(())
    files.read_rows("s", 0, scalar)
    assert scalar.item() == 2.5
    with pytest.raises(ValueError, match=r"no rows 8\.\.12"):
        files.read_rows("w", 8, out)
    path.write_bytes(path.read_bytes()[:-20])  # a truncated file
    with pytest.raises(ValueError, match="truncated"):
        TensorFiles([path]).read_rows("w", 0, torch.empty(10, 3))
    with pytest.raises(FileNotFoundError, match=r"neither diffusion_pytorch_model\.safetensors"):
        TensorFiles.from_folder(tmp_path)


def test_one_process_keeps_the_full_load_and_a_damaged_snapshot_is_named(tiny_zoo, tmp_path):
    """One process: the adapter's own full load (the toy adapter of the trainer tests has only that). A snapshot
    whose weights do not fit its config fails with the names of the tensors and the fix."""
    import shutil

    from sidrepro.distill.sharded_load import load_local_weights, materialise

    adapter = load_teacher("tiny-sd3", tiny_zoo["tiny-sd3"])
    net = load_network(adapter, torch.float32, torch.device("cpu"))
    want = adapter.load_transformer().state_dict()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.items())
    folder = tmp_path / "transformer"
    shutil.copytree(adapter.transformer_folder, folder)
    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    sd.pop("proj_out.bias")
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    empty = materialise(adapter.empty_transformer(), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"missing \['proj_out.bias'\].*fetch it again"):
        load_local_weights(empty, TensorFiles.from_folder(folder))

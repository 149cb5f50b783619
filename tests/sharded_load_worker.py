"""Sharded loading test worker: ``torchrun --nproc_per_node 2 sharded_load_worker.py MODE OUT ZOO [ARGS]``.

``families``: every zoo family, fp32 and bf16, built the sharded way (meta device, ``fully_shard``, own rows read)
against ``from_pretrained``: gathered weights and buffers equal in value and dtype, the same velocity, and each
rank's reads and tensors only its shard. ``train PATH``: a 2-iteration tiny-sd3 run through ``train()`` into
``OUT/new``, then the same run with the former loading (three full copies, then sharded) into ``OUT/old``.
``init CKPT_RUN``: the generator of another run loaded by the trainer's ``init_from`` into a sharded network,
against ``export_weights``. Rank 0 writes ``OUT/MODE.json``; a failed check raises (nonzero exit).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from sidrepro.distill import trainer
from sidrepro.distill.checkpoint import export_weights, find_latest
from sidrepro.distill.config import resolve_config
from sidrepro.distill.memory import load_estimate, net_sizes
from sidrepro.distill.sharded_load import load_local_weights, load_network, local_part, materialise
from sidrepro.distill.tensor_files import TensorFiles
from sidrepro.teachers.load import load_teacher

FAMILIES = ["tiny-sana", "tiny-sana-sprint-teacher", "tiny-sd3", "tiny-sd35", "tiny-flux"]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def families(zoo: Path, device: torch.device) -> dict:
    out = {}
    for name in FAMILIES:
        adapter = load_teacher(name, zoo / name)
        for dtype in (torch.float32, torch.bfloat16):
            ref = adapter.load_transformer(dtype)
            # The steps of load_network, with a reader whose counters the test reads.
            files = TensorFiles.from_folder(adapter.transformer_folder)
            net = materialise(trainer.shard(adapter.empty_transformer(dtype)), device)
            load_local_weights(net, files, dtype=dtype)
            state, want = net.state_dict(), ref.state_dict()
            assert state.keys() == want.keys(), name
            for k, v in want.items():
                got = _full(state[k])
                assert got.dtype == v.dtype and torch.equal(got, v), (name, dtype, k)
            bufs, want_bufs = dict(net.named_buffers()), dict(ref.named_buffers())
            assert bufs.keys() == want_bufs.keys(), name
            for k, v in want_bufs.items():
                assert bufs[k].dtype == v.dtype and torch.equal(bufs[k], v), (name, dtype, k)
            assert {k for k, p in net.named_parameters() if not hasattr(p, "full_tensor")} == set(), name
            # Only this rank's rows were read (plus the buffers, whole), converted from the file's fp32.
            local = {k: local_part(t)[0] for k, t in net.state_dict(keep_vars=True).items()}
            assert files.bytes_read == sum(t.numel() * 4 for t in local.values()), name
            full = sum(v.numel() * v.element_size() for v in want.values())
            mine = sum(t.numel() * t.element_size() for t in local.values())
            sizes = net_sizes(adapter.transformer_class, adapter.transformer_config)
            model = load_estimate("sd3-medium", precision="bf16" if dtype == torch.bfloat16 else "fp32", gpus=2,
                                  sizes=sizes, encoder_gb=0, overhead_gb=0)
            # The memory model's networks term is this rank's tensors exactly (rank 0 holds the most rows).
            if dist.get_rank() == 0:
                assert mine * 3 == round(model.networks_gb * 1e9), (name, mine * 3, model.networks_gb)
            # The same velocity from the sharded network as from the one from_pretrained built.
            load_network(adapter, dtype, device, shard=trainer.shard)  # the trainer's call runs too
            if dtype == torch.float32:
                g = torch.Generator().manual_seed(0)
                cond = adapter.encode_prompts(["a red cube", "a cat"])
                x = torch.randn((2, *adapter.latent_shape(64)), generator=g)
                t = torch.tensor([0.3, 0.8])
                v_ref = adapter.velocity(ref, x, t, cond, scale=2.0)[0]
                v = adapter.velocity(net, x, t, cond, scale=2.0)[0]
                assert torch.equal(v, v_ref), (name, (v - v_ref).abs().max())
            params = {k for k, _ in ref.named_parameters()}
            out[f"{name}/{dtype}"] = {"mine": mine, "full": full, "largest_read": files.largest_read,
                                      "largest_param": max(v.numel() * 4 for k, v in want.items() if k in params),
                                      "largest_buffer": max([v.numel() * 4 for k, v in want.items()
                                                             if k not in params], default=0)}
    return out


def _old_load_network(adapter, dtype, device, *, shard=None, grad_checkpointing=False, weights=True):
    """The former loading: the whole network from ``from_pretrained``, then sharded."""
    net = adapter.load_transformer(dtype)
    if grad_checkpointing:
        net.enable_gradient_checkpointing()
    return shard(net) if shard is not None else net


def train_both(zoo: Path, out: Path, prompts: Path) -> dict:
    cfg, _ = resolve_config("tiny-sd3", {"prompts": str(prompts), "snapshot_ticks": "0", "checkpoint_ticks": "100"})
    cfg = replace(cfg, duration_kimg=0.008, grad_checkpointing=True)
    adapter = load_teacher("tiny-sd3", zoo / "tiny-sd3")
    new = trainer.train(cfg, out / "new", adapter, progress=False)
    trainer.load_network = _old_load_network
    old = trainer.train(cfg, out / "old", adapter, progress=False)
    return {"new": str(new), "old": str(old)}


def init_from(zoo: Path, run: Path) -> dict:
    adapter = load_teacher("tiny-sd3", zoo / "tiny-sd3")
    gen = load_network(adapter, torch.float32, torch.device("cpu"), shard=trainer.shard, weights=False)
    nimg = trainer._init_generator_from(run, gen, dist.get_world_size())
    want = export_weights(find_latest(run), "generator")
    got = {k: _full(v) for k, v in gen.state_dict().items()}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    return {"nimg": nimg}


def main() -> None:
    mode, out, zoo = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    rank, _, device = trainer.init_distributed()
    torch.manual_seed(0)
    if mode == "families":
        result = families(zoo, device)
    elif mode == "train":
        result = train_both(zoo, out, Path(sys.argv[4]))
    elif mode == "init":
        result = init_from(zoo, Path(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    rows: list = [None] * dist.get_world_size()
    dist.all_gather_object(rows, result)
    if rank == 0:
        (out / f"{mode}.json").write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

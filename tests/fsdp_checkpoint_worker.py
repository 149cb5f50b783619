"""Sharded checkpoint test worker: ``torchrun --nproc_per_node 2 fsdp_checkpoint_worker.py MODE RUN_DIR``.

``save``: check that saves failing on one rank fail on all; save the untrained fully_shard-ed generator (bf16) /
fake-score (fp32) pair, train it 3 steps, save a sharded checkpoint, train 2 more steps. ``resume``: build the pair
from another seed, load the latest checkpoint, train the same 2 steps. Rank 0 writes what the test compares to
``RUN_DIR/{MODE}.pt``: full weights (gathered) at the save and at the end, and every rank's next ``torch.rand`` after
the save / after the load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from sidrepro.distill import checkpoint
from sidrepro.distill.checkpoint import CheckpointError, find_latest, load_checkpoint, save_checkpoint

SEED = 7


class Net(nn.Module):
    """A small MLP plus a layer its forward never uses (like an embedder a generator skips): no Adam state for it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 8))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_pair(seed: int) -> dict[str, nn.Module]:
    """The unsharded generator (bf16) / fake-score (fp32) pair."""
    torch.manual_seed(seed)  # identical initial weights on every rank
    return {"generator": Net().to(torch.bfloat16), "fake": Net()}


def build(seed: int) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
    """The pair sharded per layer and at the root like the trainer does; optimizers built after sharding."""
    models = make_pair(seed)
    for model in models.values():
        for layer in model.body:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.0, 0.999)) for name, m in models.items()}
    return models, optimizers


def train_step(models, optimizers, iteration: int) -> None:
    """One step; the batch comes from a generator seeded by (seed, rank, iteration), as in the trainer."""
    g = torch.Generator().manual_seed(SEED * 1_000_003 + dist.get_rank() * 10_007 + iteration)
    x = torch.randn(4, 8, generator=g)
    for name, model in models.items():
        inp = x.to(next(model.parameters()).dtype)
        (model(inp).float() - x).square().mean().backward()
        optimizers[name].step()
        optimizers[name].zero_grad()


def full_weights(models) -> dict[str, dict[str, torch.Tensor]]:
    """Gathered full weights of each model (a collective: every rank calls it)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {name: dict(get_model_state_dict(m, options=opts)) for name, m in models.items()}


def next_rand() -> list[torch.Tensor]:
    """Every rank's next ``torch.rand(4)`` (to check that RNG states are restored per rank)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, torch.rand(4))
    return out


def raises_everywhere(fn) -> bool:
    """Whether ``fn`` raised CheckpointError on every rank (and returned at all, i.e. did not hang)."""
    try:
        fn()
        ok = False
    except CheckpointError:
        ok = True
    flags: list = [None] * dist.get_world_size()
    dist.all_gather_object(flags, ok)
    return all(flags)


def failing_saves(run_dir: Path, models, optimizers) -> list[bool]:
    """Saves that fail on one rank only must fail on all ranks, leave no folder behind, and not hang."""
    kw = {"models": models, "optimizers": optimizers, "sharded": True}
    # rank 0 only: the state is not JSON-serialisable
    out = [raises_everywhere(lambda: save_checkpoint(run_dir, 1, state={"x": object()}, **kw))]
    # rank 1 only: writing its RNG file fails after the DCP write
    real = checkpoint._rng_state
    if dist.get_rank() == 1:
        checkpoint._rng_state = lambda: 1 / 0
    out.append(raises_everywhere(lambda: save_checkpoint(run_dir, 2, state={}, **kw)))
    checkpoint._rng_state = real
    dist.barrier()
    out.append(not any((run_dir / "checkpoints").iterdir()))
    return out


def main(mode: str, run_dir: Path) -> None:
    dist.init_process_group("gloo")
    record = {}
    if mode == "save":
        models, optimizers = build(SEED)
        torch.manual_seed(SEED + 100 * dist.get_rank())  # a different global RNG stream per rank
        record["failing_saves"] = failing_saves(run_dir, models, optimizers)
        save_checkpoint(run_dir, 0, models=models, optimizers=optimizers, state={"iteration": 0}, sharded=True)
        record["state_empty_after_save"] = not any(o.state for o in optimizers.values())
        for it in range(3):
            train_step(models, optimizers, it)
        models["fake"].requires_grad_(False)  # the trainer saves right after its generator phase, fake frozen
        save_checkpoint(run_dir, 3 * 8, models=models, optimizers=optimizers, state={"iteration": 3}, sharded=True)
        models["fake"].requires_grad_(True)
        record["opt_state_params"] = {n: len(o.state) for n, o in optimizers.items()}
        record["at_save"] = full_weights(models)
        record["rand"] = next_rand()
        start = 3
    else:
        models, optimizers = build(SEED + 1)
        box = [str(find_latest(run_dir)) if dist.get_rank() == 0 else None]  # rank 0 decides, everyone follows
        dist.broadcast_object_list(box, src=0)
        record["wrong_model_set"] = raises_everywhere(
            lambda: load_checkpoint(Path(box[0]), models={"generator": models["generator"]},
                                    optimizers={"generator": optimizers["generator"]}, sharded=True))
        models["fake"].requires_grad_(False)  # frozen while loading, too: its Adam state must still be restored
        state = load_checkpoint(Path(box[0]), models=models, optimizers=optimizers, sharded=True)
        models["fake"].requires_grad_(True)
        record["opt_state_params"] = {n: len(o.state) for n, o in optimizers.items()}
        record["rand"] = next_rand()
        record["at_save"] = full_weights(models)
        start = state["iteration"]
    for it in range(start, start + 2):
        train_step(models, optimizers, it)
    record["final"] = full_weights(models)
    if dist.get_rank() == 0:
        torch.save(record, run_dir / f"{mode}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

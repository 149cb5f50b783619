"""Sharded loading: under FSDP no rank ever holds a whole network, not even while it starts.

Each network is built with its parameters on the meta device (no memory), sharded with ``fully_shard``, and only
then materialised: each rank allocates its own shard and reads exactly those rows of every tensor from the
snapshot's safetensors (:class:`~sidrepro.distill.tensor_files.TensorFiles`). No collective, no full tensor on any
rank or host, and the ranks read their slices in parallel. Buffers (position embeddings, rotary tables) are what
``__init__`` computed, or the file's values where the file holds them, as with ``from_pretrained``.

The alternative, rank 0 streaming whole tensors that every rank receives and slices (``set_model_state_dict`` with
``broadcast_from_rank0``), holds one full tensor per rank in transit and sends every byte world-size times over the
network; reading slices needs neither. A data-aided run's generator comes from a checkpoint the same way: its
DCP shards are read into this rank's shard, or its single-process safetensors file row range by row range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .tensor_files import TensorFiles


def local_part(t: Tensor) -> tuple[Tensor, int]:
    """``(this rank's tensor, its first row in the full tensor)`` of a parameter or buffer: FSDP2 keeps rows
    ``r * ceil(n / world) ..`` of dimension 0 on rank ``r``; plain tensors are whole."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(t, DTensor):
        return t, 0
    local = t.to_local()  # this rank's rows, sharing the shard's storage
    if all(isinstance(p, Replicate) for p in t.placements):
        return local, 0
    if t.device_mesh.ndim != 1 or t.placements != (Shard(0),):
        raise ValueError(f"sharded loading reads row ranges: placements {t.placements} on a {t.device_mesh.ndim}-D "
                         "mesh are not supported (shard with fully_shard over one mesh dimension)")
    n, world = t.shape[0], t.device_mesh.size()
    start = min(n, t.device_mesh.get_local_rank() * math.ceil(n / world))
    if local.shape[0] != min(math.ceil(n / world), n - start):
        raise ValueError(f"unexpected shard of {local.shape[0]} rows from row {start} of a tensor of {n} rows")
    return local, start


def materialise(net: nn.Module, device: torch.device) -> nn.Module:
    """Allocate (uninitialised) what is still on the meta device on ``device``: under FSDP only this rank's shards.
    Buffers keep the values ``__init__`` gave them."""
    kept = {name: b for name, b in net.named_buffers() if not b.is_meta}
    net.to_empty(device=device)
    with torch.no_grad():
        for name, b in kept.items():
            net.get_buffer(name).copy_(b)
    return net


@torch.no_grad()
def load_local_weights(net: nn.Module, files: TensorFiles, *, dtype: torch.dtype | None = None) -> None:
    """Fill this rank's part of every parameter and persistent buffer of ``net`` from ``files``. Floating buffers
    read from the file take ``dtype`` (``from_pretrained`` casts what it loads to the dtype it was asked for)."""
    state = net.state_dict(keep_vars=True)
    missing, unexpected = state.keys() - files.keys(), files.keys() - state.keys()
    shapes = [k for k in state.keys() & files.keys() if tuple(state[k].shape) != files.info[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{files.files[0].parent}: the weights do not fit the model built from its config (missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}, other shape {shapes[:5]}): "
                         "the snapshot is damaged or from another model; fetch it again")
    buffers = {name for name, _ in net.named_buffers()}
    for name, t in state.items():
        if name in buffers and dtype is not None and t.is_floating_point() and t.dtype != dtype:
            module, _, attr = name.rpartition(".")
            owner = net.get_submodule(module)
            owner.register_buffer(attr, torch.empty(t.shape, dtype=dtype, device=t.device))
            t = owner.get_buffer(attr)
        local, start = local_part(t)
        files.read_rows(name, start, local)


def load_network(adapter, dtype: torch.dtype, device: torch.device, *,
                 shard: Callable[[nn.Module], nn.Module] | None = None, grad_checkpointing: bool = False,
                 weights: bool = True) -> nn.Module:
    """One of the trainer's three networks. With ``shard`` (FSDP): built on the meta device, sharded, then only
    this rank's shard materialised and read from the snapshot (``weights=False`` leaves it uninitialised for a
    checkpoint to fill). Without: the adapter's plain full load (one process holds the whole network anyway)."""
    if shard is None:
        net = adapter.load_transformer(dtype)
        if grad_checkpointing:
            net.enable_gradient_checkpointing()
        return net
    net = adapter.empty_transformer(dtype)
    if grad_checkpointing:
        net.enable_gradient_checkpointing()
    net = materialise(shard(net), device)
    if weights:
        load_local_weights(net, TensorFiles.from_folder(adapter.transformer_folder), dtype=dtype)
    return net


def load_checkpoint_model(ckpt: Path, name: str, net: nn.Module, *, distributed: bool) -> None:
    """Load model ``name`` of checkpoint folder ``ckpt`` into ``net`` (sharded or not), reading only this rank's
    part: a DCP checkpoint through DCP (any world size that saved it), a single-process one from its safetensors
    file by row ranges. Under a process group every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from .checkpoint import CheckpointError, _check_folder, _dcp_load, _read_dcp_metadata

    manifest = _check_folder(Path(ckpt), verify=False)
    if name not in manifest["models"]:
        raise CheckpointError(f"{ckpt}: no model {name!r} in this checkpoint (it holds {manifest['models']})")
    if not manifest["sharded"]:
        load_local_weights(net, TensorFiles([Path(ckpt) / f"{name}.safetensors"]))
        return
    meta = _read_dcp_metadata(Path(ckpt))
    saved = {p[2] for p in meta.planner_data.values() if p[:2] == ("model", name) and len(p) == 3}
    sd = get_model_state_dict(net)
    if set(sd) != saved:
        raise CheckpointError(f"{ckpt}: model {name!r} does not match the checkpoint (missing "
                              f"{sorted(set(sd) - saved)[:5]}, unexpected {sorted(saved - set(sd))[:5]}): it was "
                              "trained from another teacher configuration")
    try:
        _dcp_load({"model": {name: sd}}, Path(ckpt), distributed=distributed)
    except Exception as e:
        raise CheckpointError(f"{ckpt}: reading model {name!r} failed ({type(e).__name__}: {e})") from e
    set_model_state_dict(net, sd)

"""Training checkpoints that survive a kill at any instant and never hang under FSDP (spec §8, §9.3).

Layout, one folder per checkpoint, ``run_dir/checkpoints/ckpt-{nimg:010d}/``:

* unsharded: ``{name}.safetensors`` per model (full weights, model dtype), ``optim-{name}.pt`` (optimizer state;
  floating tensors narrower than fp32 are widened to fp32 — the official SANA loop stored fp16 moments and resumed
  lossily), ``rng.pt``, ``state.json`` (the caller's dict) and ``COMPLETE``;
* sharded (FSDP2 ``fully_shard`` under a process group): ``dcp/`` (a ``torch.distributed.checkpoint`` folder, one
  ``__{rank}_*.distcp`` file per rank, optimizer tensors widened to fp32 as above), ``rng-{rank}.pt`` per rank,
  ``state.json`` and ``COMPLETE``.

Kill safety: everything is written into ``ckpt-….tmp-<random>``, fsynced, and ``COMPLETE`` (a JSON manifest of every
file with its size and sha256) is the last file written before the folder is renamed to its final name. A folder is
only ever deleted after renaming it to ``ckpt-….del-<random>``. So a folder with a final name is complete unless the
disk corrupted it, and :func:`find_latest` checks the manifest anyway. Leftover ``.tmp-``/``.del-`` folders are
removed by the next save. One writer per ``run_dir``.

Hang safety (sharded): every rank runs the same sequence of collectives; work done by one rank only (rank 0's
folder handling, each rank's own files) is wrapped so that its error is shared through the next collective and all
ranks raise together, instead of one rank raising while the others wait in a barrier forever.

Randomness: :func:`load_checkpoint` restores the torch (CPU and CUDA), Python and NumPy RNG states, but the trainer
derives its per-iteration seeds from ``(seed, rank, nimg)`` anyway, so a resumed run replays the same randomness,
and the data order stays the same even when it resumes with a different world size (DCP reshards the weights and
optimizer state on load; only the per-rank RNG files then no longer match one to one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..hashing import file_digest

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "export_weights", "find_latest", "load_checkpoint", "save_checkpoint"]

FORMAT = "sidrepro-checkpoint/1"
MARKER = "COMPLETE"
_FINAL_RE = re.compile(r"^ckpt-(\d{10})$")
_LEFTOVER_RE = re.compile(r"^ckpt-\d{10}\.(tmp|del)-[0-9a-f]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # used in file names and DCP keys (no dots)
_DCP = "dcp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match the models it is loaded into."""


# ----------------------------------------------------------------------------------------------------------------
# public API


def save_checkpoint(
    run_dir: Path,
    nimg: int,
    *,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict,
    keep: int = 3,
    sharded: bool = False,
) -> Path:
    """Write a checkpoint of ``models``/``optimizers``/RNG/``state`` at ``nimg`` and return its folder.

    ``optimizers`` are keyed by the name of the model they train. ``state`` must be JSON-serialisable. The
    ``keep`` newest complete checkpoints at or below ``nimg`` are retained (the new one included); older ones are
    deleted only after the new one is complete. Checkpoints with a larger ``nimg`` (an abandoned continuation) are
    left alone with a warning.

    Unsharded (``sharded=False``): call from one process only (rank 0 under DDP); it uses no collectives.
    Sharded (``sharded=True``): call on every rank, at the same point, with the same model and optimizer names; the
    run folder must be on a file system all ranks share.
    """
    run_dir = Path(run_dir)
    _check_names(models, optimizers)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if nimg < 0:
        raise ValueError(f"nimg must be >= 0, got {nimg}")
    if sharded:
        return _save_sharded(run_dir, nimg, models, optimizers, state, keep)
    return _save_unsharded(run_dir, nimg, models, optimizers, state, keep)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Every complete checkpoint folder of ``run_dir``, oldest first (incomplete or damaged ones are skipped)."""
    good = []
    for _, path in sorted(_final_folders(Path(run_dir) / "checkpoints")):
        try:
            _check_folder(path, verify=False)
        except CheckpointError:
            continue
        good.append(path)
    return good


def find_latest(run_dir: Path, *, verify: bool = False) -> Path | None:
    """Newest complete checkpoint folder in ``run_dir/checkpoints``, or ``None``.

    A folder counts only if its ``COMPLETE`` manifest parses and every listed file exists with the listed size
    (``verify=True`` also checks the sha256 sums). Other folders are skipped with a warning naming them, so a
    corrupt newest checkpoint falls back to the previous good one. Under a process group, call it on rank 0 and
    broadcast the result: ranks must not decide on their own (:func:`load_checkpoint` checks that they agree).
    """
    for _, path in sorted(_final_folders(Path(run_dir) / "checkpoints"), reverse=True):
        try:
            _check_folder(path, verify=verify)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        return path
    return None


def load_checkpoint(
    path: Path,
    *,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    sharded: bool = False,
) -> dict:
    """Load weights, optimizer state and RNG states from checkpoint folder ``path``; return the saved ``state``.

    ``models``/``optimizers`` must be the same set of names that was saved. With ``sharded=True`` (every rank, FSDP2
    models, optimizers built after ``fully_shard``) DCP loads each rank's shard; the world size may differ from the
    one that saved. With ``sharded=False`` plain modules are loaded, from either kind of checkpoint. A checkpoint
    that fails validation or does not match the models modifies nothing; a shard that turns out unreadable half-way
    through a DCP load can leave the models partly loaded (raise, do not train on).
    """
    path = Path(path)
    _check_names(models, optimizers)
    if sharded:
        return _load_sharded(path, models, optimizers)
    manifest = _check_folder(path, verify=False)
    _check_model_set(path, manifest, models, optimizers)
    for name, model in models.items():
        if _is_dtensor_module(model):
            raise CheckpointError(f"{path}: model {name!r} is sharded (FSDP); load with sharded=True on every rank")
    if manifest["sharded"]:
        state = _load_dcp(path, models, optimizers, distributed=False)
        _restore_rng(path / "rng-0.pt", path)
        return state
    return _load_unsharded(path, models, optimizers)


def export_weights(path: Path, name: str) -> dict[str, Tensor]:
    """Full (unsharded) weights of model ``name`` from a checkpoint, floating tensors as fp32, on the CPU.

    Works on sharded checkpoints without a process group (reads every rank's shard of that model only).
    """
    path = Path(path)
    manifest = _check_folder(path, verify=False)
    if name not in manifest["models"]:
        raise CheckpointError(f"{path}: no model {name!r} in this checkpoint (it holds {manifest['models']})")
    if manifest["sharded"]:
        meta = _read_dcp_metadata(path)
        keys = {flat: p[2] for flat, p in meta.planner_data.items() if p[:2] == ("model", name) and len(p) == 3}
        buf = {}
        for flat in keys:
            md = meta.state_dict_metadata[flat]
            buf[flat] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        try:
            _dcp_load(buf, path, distributed=False)
        except Exception as e:
            raise CheckpointError(f"{path}: reading model {name!r} from {path / _DCP} failed: {e}") from e
        weights = {keys[flat]: t for flat, t in buf.items()}
    else:
        weights = _read_safetensors(path / f"{name}.safetensors", path)
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{keys[:n]}{more}"


def _check_names(models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    bad = [n for n in models if not _NAME_RE.match(n)]
    if bad:
        raise ValueError(f"model names must match {_NAME_RE.pattern} (they name files and DCP keys): {bad}")
    orphans = set(optimizers) - set(models)
    if orphans:
        raise ValueError(f"optimizers must be keyed by the name of the model they train; unknown: {sorted(orphans)}")


def _is_dtensor_module(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _widen(t: Tensor) -> Tensor:
    """fp16/bf16 (and narrower) optimizer state is stored as fp32; fp32/fp64 stay as they are (never narrowed)."""
    t = t.detach().cpu()
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # works for files and folders on Linux
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _describe(folder: Path, rels: Iterable[str]) -> dict[str, dict]:
    return {rel: {"size": (folder / rel).stat().st_size, "sha256": file_digest(folder / rel)} for rel in rels}


def _dump_state(state: dict) -> bytes:
    try:
        return json.dumps(state, indent=1, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"state must be a JSON-serialisable dict: {e}") from e


def _rng_state() -> dict:
    np_state = np.random.get_state()
    # this process's device only (one GPU per rank), so the file does not depend on how many GPUs a node shows
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "python": random.getstate(),
        # plain types so that torch.load(weights_only=True) accepts it
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "rest": [*np_state[2:4], float(np_state[4])]},
    }


def _restore_rng(file: Path, ckpt: Path) -> None:
    if not file.exists():
        log.warning("%s: no %s (saved with another world size?); RNG states not restored", ckpt, file.name)
        return
    rng = _torch_load(file, ckpt)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"][0])
    random.setstate(rng["python"])
    pos, has_gauss, gauss = rng["numpy"]["rest"]
    np.random.set_state(("MT19937", rng["numpy"]["keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))


def _torch_load(file: Path, ckpt: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{ckpt}: {file.name} is unreadable ({type(e).__name__}: {e}); the checkpoint is corrupt: "
            f"delete or move {ckpt} and resume from the previous one (find_latest(..., verify=True) skips it)"
        ) from e


def _read_safetensors(file: Path, ckpt: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except Exception as e:
        raise CheckpointError(
            f"{ckpt}: {file.name} is unreadable ({type(e).__name__}: {e}); the checkpoint is corrupt: "
            f"delete or move {ckpt} and resume from the previous one (find_latest(..., verify=True) skips it)"
        ) from e


def _read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: state.json is unreadable ({e}); the checkpoint is corrupt") from e


# ----------------------------------------------------------------------------------------------------------------
# folder handling: validation, publication, retention


def _final_folders(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return [(int(m.group(1)), p) for p in root.iterdir() if (m := _FINAL_RE.match(p.name)) and p.is_dir()]


def _check_folder(path: Path, *, verify: bool) -> dict:
    """Parse and check the ``COMPLETE`` manifest of ``path``; return it or raise :class:`CheckpointError`."""
    try:
        manifest = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MARKER} marker (incomplete checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {MARKER} marker ({e})") from e
    ok = isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(manifest.get("files"), dict)
    if not ok:
        raise CheckpointError(f"{path}: {MARKER} is not a {FORMAT} manifest")
    for rel, info in manifest["files"].items():
        file = path / rel
        try:
            size = file.stat().st_size
        except OSError:
            raise CheckpointError(f"{path}: {rel} is missing") from None
        if size != info["size"]:
            raise CheckpointError(f"{path}: {rel} has {size} bytes, the manifest says {info['size']} (truncated?)")
        if verify and file_digest(file) != info["sha256"]:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 (corrupt)")
    return manifest


def _check_model_set(path: Path, manifest: dict, models: Mapping, optimizers: Mapping) -> None:
    for what, have in (("models", models), ("optimizers", optimizers)):
        saved = manifest[what]
        missing, extra = set(saved) - set(have), set(have) - set(saved)
        if missing or extra:
            raise CheckpointError(
                f"{path}: the checkpoint holds {what} {sorted(saved)}, but {sorted(have)} were given "
                f"(not given: {sorted(missing)}, not in the checkpoint: {sorted(extra)}); pass the same set that "
                "was saved, or use export_weights() to take single models out of it"
            )


def _new_tmp(root: Path, nimg: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():  # folders of saves or deletions that were killed half-way
        if _LEFTOVER_RE.match(p.name):
            log.info("removing leftover %s", p)
            shutil.rmtree(p, ignore_errors=True)
    tmp = root / f"ckpt-{nimg:010d}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _delete(path: Path) -> None:
    """Rename first, so that a kill during the recursive delete never leaves a half-deleted checkpoint name."""
    trash = path.with_name(f"{path.name}.del-{secrets.token_hex(4)}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _publish(tmp: Path, files: dict[str, dict], meta: dict) -> Path:
    """Write ``COMPLETE`` last, make it durable, and rename the temp folder to its final name."""
    manifest = {"format": FORMAT, **meta, "created_unix": time.time(), "torch": torch.__version__, "files": files}
    _write_bytes(tmp / MARKER, json.dumps(manifest, indent=1, sort_keys=True).encode())
    for sub in (tmp / _DCP, tmp):
        if sub.is_dir():
            _fsync(sub)
    final = tmp.with_name(tmp.name.split(".tmp-")[0])
    if final.exists():  # the same nimg saved again (e.g. right after a resume): replace it
        log.warning("replacing existing checkpoint %s", final)
        _delete(final)
    os.rename(tmp, final)
    _fsync(final.parent)
    return final


def _prune(final: Path, keep: int) -> None:
    nimg = int(_FINAL_RE.match(final.name).group(1))
    folders = _final_folders(final.parent)
    newer = sorted(p.name for n, p in folders if n > nimg)
    if newer:
        log.warning("%s: newer checkpoints %s exist (an abandoned continuation?); find_latest will prefer them, "
                    "move them away if this run should continue from %s", final.parent, _few(newer), final.name)
    kept = 1
    for _, p in sorted(((n, p) for n, p in folders if n < nimg), reverse=True):
        if kept < keep:
            try:
                _check_folder(p, verify=False)
                kept += 1
                continue
            except CheckpointError:
                pass  # unusable: delete it too
        try:
            _delete(p)
        except OSError as e:  # retention is housekeeping: never fail a completed save over it
            log.warning("could not delete old checkpoint %s: %s", p, e)


# ----------------------------------------------------------------------------------------------------------------
# unsharded


def _param_names(opt: torch.optim.Optimizer, models: Mapping[str, nn.Module]) -> list[list[str]]:
    names = {id(p): f"{m}.{n}" for m, model in models.items() for n, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in g["params"]] for g in opt.param_groups]


def _save_unsharded(run_dir, nimg, models, optimizers, state, keep) -> Path:
    import torch.distributed as dist
    from safetensors.torch import save_file

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        raise CheckpointError("save_checkpoint(sharded=False) writes from one process: call it on rank 0 only")
    for name, model in models.items():
        if _is_dtensor_module(model):
            raise CheckpointError(f"model {name!r} is sharded (FSDP); save with sharded=True on every rank")
    state_json = _dump_state(state)
    tmp = _new_tmp(run_dir / "checkpoints", nimg)
    try:
        for name, model in models.items():
            tensors, seen = {}, set()
            for k, v in model.state_dict().items():
                if not torch.is_tensor(v):
                    raise CheckpointError(f"model {name!r}: state entry {k!r} is not a tensor")
                v = v.detach().cpu().contiguous()
                storage = v.untyped_storage().data_ptr()
                tensors[k] = v.clone() if storage in seen else v  # safetensors refuses tensors sharing memory
                seen.add(storage)
            save_file(tensors, tmp / f"{name}.safetensors", metadata={"format": FORMAT, "model": name})
            _fsync(tmp / f"{name}.safetensors")
        for name, opt in optimizers.items():
            sd = opt.state_dict()
            sd["state"] = {i: {k: _widen(v) if torch.is_tensor(v) else v for k, v in s.items()}
                           for i, s in sd["state"].items()}
            _torch_save({"state_dict": sd, "param_names": _param_names(opt, models)}, tmp / f"optim-{name}.pt")
        _torch_save(_rng_state(), tmp / "rng.pt")
        _write_bytes(tmp / "state.json", state_json)
        files = _describe(tmp, sorted(p.name for p in tmp.iterdir()))
        meta = {"nimg": nimg, "sharded": False, "world_size": 1, "models": sorted(models),
                "optimizers": sorted(optimizers)}
        final = _publish(tmp, files, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(final, keep)
    return final


def _load_unsharded(path: Path, models, optimizers) -> dict:
    # read and check everything before touching a model, so that a failed load leaves the run as it was
    weights = {}
    for name, model in models.items():
        sd = _read_safetensors(path / f"{name}.safetensors", path)
        own = model.state_dict()
        missing, extra = own.keys() - sd.keys(), sd.keys() - own.keys()
        shapes = [k for k in own.keys() & sd.keys() if tuple(own[k].shape) != tuple(sd[k].shape)]
        if missing or extra or shapes:
            raise CheckpointError(
                f"{path}: model {name!r} does not match the checkpoint (missing {_few(missing)}, unexpected "
                f"{_few(extra)}, other shape {_few(shapes)}); it was saved from a different model configuration: "
                "resume with the same config, or start a new run_dir"
            )
        weights[name] = sd
    optim_sds = {}
    for name, opt in optimizers.items():
        obj = _torch_load(path / f"optim-{name}.pt", path)
        saved, now = obj["param_names"], _param_names(opt, models)
        flat_saved, flat_now = [n for g in saved for n in g], [n for g in now for n in g]
        if [len(g) for g in saved] != [len(g) for g in now] or ("?" not in flat_saved + flat_now and saved != now):
            diff = [f"{a} != {b}" for a, b in zip(flat_saved, flat_now, strict=False) if a != b]
            raise CheckpointError(
                f"{path}: optimizer {name!r} was saved for other parameters (groups of {[len(g) for g in saved]} "
                f"vs {[len(g) for g in now]}; first differences {_few(diff, 3)}); build it the same way as the run "
                "that saved it"
            )
        optim_sds[name] = obj["state_dict"]
    state = _read_state(path)
    for name, model in models.items():
        model.load_state_dict(weights[name], strict=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(optim_sds[name])  # casts the fp32 state back to each parameter's dtype and device
    _restore_rng(path / "rng.pt", path)
    return state


# ----------------------------------------------------------------------------------------------------------------
# sharded (FSDP2 + torch.distributed.checkpoint)


def _widening_planner():
    """A DCP save planner that writes optimizer tensors narrower than fp32 as fp32.

    The cast happens per tensor while writing, so no fp32 copy of a whole (GPU-resident) optimizer state is made.
    """
    from torch.distributed.checkpoint import DefaultSavePlanner

    class _WideningPlanner(DefaultSavePlanner):
        def create_local_plan(self):
            plan = super().create_local_plan()
            items = []
            for item in plan.items:
                td = item.tensor_data
                if td is not None and item.index.fqn.startswith("optim.") and td.properties.dtype.is_floating_point \
                        and torch.empty((), dtype=td.properties.dtype).element_size() < 4:
                    props = dataclasses.replace(td.properties, dtype=torch.float32)
                    item = dataclasses.replace(item, tensor_data=dataclasses.replace(td, properties=props))
                items.append(item)
            self.plan = dataclasses.replace(plan, items=items)
            return self.plan

        def resolve_data(self, write_item):
            data = super().resolve_data(write_item)
            td = write_item.tensor_data
            if td is not None and torch.is_tensor(data) and data.dtype != td.properties.dtype:
                data = data.to(td.properties.dtype)
            return data

    return _WideningPlanner()


def _agree(err: str | None, what: str) -> None:
    """Collective: share each rank's error (or ``None``); every rank raises if any rank failed. Also a barrier."""
    import torch.distributed as dist

    errs: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    bad = [f"rank {r}: {e}" for r, e in enumerate(errs) if e]
    if bad:
        raise CheckpointError(f"{what} failed on {len(bad)} rank(s): " + "; ".join(bad[:4]))


def _state_dicts(models, optimizers, names: list[str], *, for_save: bool) -> dict:
    """``{"model": {name: sd}, "optim": {name: osd}}`` as DCP sees them (sharded tensors stay sharded)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    out: dict[str, dict] = {"model": {}, "optim": {}}
    for name in names:
        if name in optimizers:
            opt, model = optimizers[name], models[name]
            was_empty = not opt.state
            # get_state_dict initialises an empty optimizer state with a zero-lr step over the parameters that
            # require grad. Loading: make that all of them, so the template has a slot for everything the
            # checkpoint may hold (slots it does not hold are dropped later).
            with contextlib.nullcontext() if for_save else _all_trainable(model):
                out["model"][name], out["optim"][name] = get_state_dict(model, opt)
            if for_save and was_empty:  # saving must not change the run: undo that initialisation
                opt.state.clear()
                out["optim"][name]["state"] = {}
        else:
            out["model"][name] = get_model_state_dict(models[name])
    return out


@contextlib.contextmanager
def _all_trainable(model: nn.Module) -> Iterator[None]:
    """Temporarily mark every parameter as trainable.

    The trainer freezes one network per phase (``requires_grad_(False)``), and DCP's optimizer state helpers skip
    frozen parameters: without this, a load would silently drop the Adam state of the frozen network.
    """
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _save_sharded(run_dir, nimg, models, optimizers, state, keep) -> Path:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if not (dist.is_available() and dist.is_initialized()):
        raise CheckpointError("save_checkpoint(sharded=True) needs an initialised process group")
    rank = dist.get_rank()
    # Collective 1: rank 0 prepares the temp folder; every rank learns its name or rank 0's error.
    box: list[Any] = [None]
    if rank == 0:
        try:
            state_json = _dump_state(state)
            tmp = _new_tmp(run_dir / "checkpoints", nimg)
            (tmp / _DCP).mkdir()
            box = [("ok", str(tmp))]
        except Exception as e:
            box = [("err", f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "err":
        raise CheckpointError(f"saving checkpoint {nimg} in {run_dir} failed on rank 0: {box[0][1]}")
    tmp = Path(box[0][1])
    try:
        # Collective 2: every rank writes its shards (DCP shares errors across ranks itself).
        sd = _state_dicts(models, optimizers, sorted(models), for_save=True)
        meta = dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp / _DCP)), planner=_widening_planner())
        # Local: each rank writes and describes its own files; nobody lists another rank's files (NFS caches).
        err, files = None, {}
        try:
            _torch_save(_rng_state(), tmp / f"rng-{rank}.pt")
            own = [f"rng-{rank}.pt", *sorted(f"{_DCP}/{p.name}" for p in (tmp / _DCP).glob(f"__{rank}_*"))]
            if rank == 0:
                _write_bytes(tmp / "state.json", state_json)
                _fsync(tmp / _DCP / ".metadata")
                own += ["state.json", f"{_DCP}/.metadata"]
            files = _describe(tmp, own)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        # Collective 3: the barrier after every rank's writes, carrying their file lists and errors.
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (err, files))
        bad = [f"rank {r}: {e}" for r, (e, _) in enumerate(gathered) if e]
        if bad:
            raise CheckpointError(f"saving checkpoint {nimg} in {tmp} failed: " + "; ".join(bad[:4]))
        # Rank 0 alone publishes; collective 4 (the final barrier) shares the outcome, so no rank races ahead.
        err, final = None, tmp.with_name(tmp.name.split(".tmp-")[0])
        if rank == 0:
            try:
                all_files = {k: v for _, f in gathered for k, v in f.items()}
                expected = {f"{_DCP}/{s.relative_path}" for s in meta.storage_data.values()}
                if not expected <= all_files.keys():
                    raise CheckpointError(f"DCP wrote files no rank accounted for: {_few(expected - all_files.keys())}")
                info = {"nimg": nimg, "sharded": True, "world_size": dist.get_world_size(),
                        "models": sorted(models), "optimizers": sorted(optimizers)}
                final = _publish(tmp, dict(sorted(all_files.items())), info)
                _prune(final, keep)
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
        _agree(err, f"publishing checkpoint {final}")
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_dcp_metadata(path: Path):
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.FileSystemReader(str(path / _DCP)).read_metadata()
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable {_DCP}/.metadata ({type(e).__name__}: {e}); corrupt checkpoint") \
            from e


def _dcp_load(sd: dict, path: Path, *, distributed: bool) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # DCP warns on every single-process load, which is what we asked for
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path / _DCP)), no_dist=not distributed)


def _load_dcp(path: Path, models, optimizers, *, distributed: bool) -> dict:
    """Load a DCP checkpoint into ``models``/``optimizers`` (sharded or plain). Same sequence on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    meta = _read_dcp_metadata(path)
    saved: dict[tuple[str, str], set[str]] = {}
    for p in meta.planner_data.values():
        if p[0] == "model" and len(p) == 3:
            saved.setdefault(("model", p[1]), set()).add(p[2])
        elif p[0] == "optim" and len(p) == 5 and p[2] == "state":
            saved.setdefault(("optim", p[1]), set()).add(p[3])
    names = sorted(models)
    sd = _state_dicts(models, optimizers, names, for_save=False)
    for name in names:  # deterministic on every rank, so all ranks raise together (no hang)
        own, ckpt = set(sd["model"][name]), saved.get(("model", name), set())
        if own != ckpt:
            raise CheckpointError(
                f"{path}: model {name!r} does not match the checkpoint (missing {_few(own - ckpt)}, unexpected "
                f"{_few(ckpt - own)}); it was saved from a different model configuration: resume with the same "
                "config, or start a new run_dir"
            )
        if name in optimizers:  # parameters that had no optimizer state when saved must have none after loading
            have = saved.get(("optim", name), set())
            sd["optim"][name]["state"] = {k: v for k, v in sd["optim"][name]["state"].items() if k in have}
    try:
        _dcp_load(sd, path, distributed=distributed)
    except Exception as e:
        raise CheckpointError(f"{path}: loading {_DCP}/ failed ({type(e).__name__}: {e})") from e
    # strict=False: parameters without saved optimizer state (never stepped) keep none; the model keys were
    # checked to match exactly above.
    lenient = StateDictOptions(strict=False)
    for name in names:
        if name in optimizers:
            with _all_trainable(models[name]):
                set_state_dict(models[name], optimizers[name], model_state_dict=sd["model"][name],
                               optim_state_dict=sd["optim"][name], options=lenient)
        else:
            set_model_state_dict(models[name], sd["model"][name])
    return _read_state(path)


def _load_sharded(path: Path, models, optimizers) -> dict:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise CheckpointError("load_checkpoint(sharded=True) needs an initialised process group")
    err = None
    try:
        manifest = _check_folder(path, verify=False)
        if not manifest["sharded"]:
            raise CheckpointError(f"{path} is an unsharded checkpoint: load it with sharded=False (plain modules)")
        _check_model_set(path, manifest, models, optimizers)
    except CheckpointError as e:
        err = str(e)
    paths: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(paths, (str(path), err))
    if len({p for p, _ in paths}) > 1:
        raise CheckpointError(f"ranks were given different checkpoints: {sorted({p for p, _ in paths})}; "
                              "call find_latest on rank 0 and broadcast its answer")
    errs = [f"rank {r}: {e}" for r, (_, e) in enumerate(paths) if e]
    if errs:
        raise CheckpointError("; ".join(errs[:4]))
    state = _load_dcp(path, models, optimizers, distributed=True)
    err = None
    try:
        _restore_rng(path / f"rng-{dist.get_rank()}.pt", path)
    except CheckpointError as e:
        err = str(e)
    _agree(err, f"loading {path}")
    return state

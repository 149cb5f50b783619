"""Export a distilled generator as a diffusers pipeline folder (the teacher's pipeline with the student's
transformer, loadable with ``from_pretrained``) plus a model card, and generate images from such a folder with
the SiD few-step sampler (spec §2.3, §11: no CFG, FLUX guidance 1.0)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..selection import SelectionError, check_rule, describe, read_scores
from ..selection import select as choose
from ..sid.sampler import generate
from ..teachers.registry import get_teacher
from ..teachers.student import STUDENT_FILE, load_student
from .checkpoint import find_latest
from .snapshots import snapshot_folder
from .stream_export import write_transformer

_SKIP = {"transformer", ".cache", ".sidrepro-snapshot.json", "zoo.json"}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the teacher's encoders and VAE are gigabytes: share them where the filesystem allows
    except OSError:
        shutil.copy2(src, dst)


def export_student(run_dir: Path, teacher_folder: Path, out: Path, *, checkpoint: Path | None = None,
                   teacher_commit: str = "", select: str | None = None) -> Path:
    """Write ``out``: the teacher snapshot's components, the generator from ``checkpoint`` (default: the run's
    latest, or with ``select`` the scored snapshot that rule chooses, ``sidrepro.selection``) as ``transformer/``,
    ``README.md`` and ``sidrepro_student.json`` (which records the selection). Written beside ``out`` first and
    renamed, so ``out`` is either the previous export or the complete new one."""
    import diffusers

    selection = None
    if select is not None:
        if checkpoint is not None:
            raise ValueError("give a checkpoint or a selection rule, not both")
        scores = read_scores(run_dir)
        if not scores:
            raise SelectionError(f"{run_dir} has no scored snapshots to select from: train with "
                                 f"`sidrepro distill --select-protocol paper|clean --reference COCO`, or export the "
                                 f"latest checkpoint (no --select)")
        chosen = choose(scores, check_rule(select))
        selection = describe(chosen, select, scores)
        checkpoint = snapshot_folder(run_dir, chosen.name)
    ckpt = checkpoint or find_latest(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint under {run_dir}: train first (`sidrepro distill`)")
    state = json.loads((ckpt / "state.json").read_text())
    cfg = state["config"]
    entry = get_teacher(cfg["teacher"])
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(teacher_folder, tmp, ignore=lambda d, names: [n for n in names if n in _SKIP and
                                                                   Path(d) == Path(teacher_folder)],
                    copy_function=_link_or_copy)
    from ..teachers.load import adapter_class

    cls = getattr(diffusers, adapter_class(entry.family).transformer_class)
    write_transformer(ckpt, "generator", cls.load_config(Path(teacher_folder) / "transformer"), cls,
                      tmp / "transformer")
    meta = {"teacher": entry.name, "hub_id": entry.hub_id, "revision": entry.revision, "commit": teacher_commit,
            "setting": cfg["setting"], "num_steps": cfg["num_steps"], "init_timestep": cfg["init_timestep"],
            "noise": cfg["noise"], "resolution": cfg["resolution"], "images_seen": int(state["nimg"]) +
            int(state.get("init_nimg", 0)), "checkpoint": str(ckpt), "config": cfg,
            "code": state.get("code", {}), "selection": selection}
    (tmp / STUDENT_FILE).write_text(json.dumps(meta, indent=1))
    (tmp / "README.md").write_text(_model_card(meta))
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def _model_card(m: dict) -> str:
    commit = f" (commit `{m['commit']}`)" if m["commit"] else ""
    return (f"# SiD-DiT student of {m['teacher']}\n\n"
            f"A {m['num_steps']}-step generator distilled with Score identity Distillation from "
            f"`{m['hub_id']}`@`{m['revision']}`{commit}, setting **{m['setting']}**, after "
            f"{m['images_seen']:,} images, at {m['resolution']} px.\n\n"
            f"The folder is the teacher's diffusers pipeline with the distilled `transformer/`. Sample it with the "
            f"SiD few-step sampler, not the pipeline's own multi-step loop:\n\n"
            f"```bash\nsidrepro generate --student <this folder> --prompts prompts.txt --out images/\n```\n\n"
            f"No classifier-free guidance at sampling time (FLUX: guidance embedding 1.0); noise type "
            f"`{m['noise']}`, first step at timestep {m['init_timestep']}. The full training configuration is in "
            f"`{STUDENT_FILE}`.\n" + _selection_card(m.get("selection")))


def _selection_card(sel: dict | None) -> str:
    if not sel:
        return ""
    last = sel["last"]
    return (f"\nThis is the snapshot at {sel['kimg']:g} kimg, chosen by rule `{sel['rule']}` among {sel['candidates']} "
            f"scored snapshots on {sel['num_images']} captions of `{sel['subset']}` (protocol `{sel['protocol']}`): "
            f"FID {sel['fid']:.3f}, CLIP {sel['clip']:.4f}. The run's last snapshot ({last['kimg']:g} kimg) scored "
            f"FID {last['fid']:.3f}, CLIP {last['clip']:.4f}.\n")


@torch.no_grad()
def generate_images(folder: Path, prompts: Sequence[str], seeds: Sequence[int], *, batch: int = 4,
                    steps: int | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                    ) -> Iterator[tuple[int, str, torch.Tensor]]:
    """Yield ``(seed, prompt, image uint8 (3, H, W))``; image ``i`` uses ``prompts[i]`` and one generator seeded with
    ``seeds[i]`` for its initial latent and any fresh noise, so each image is reproducible on its own."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    adapter, gen, meta = load_student(folder, device=device, dtype=dtype)
    steps = steps or int(meta["num_steps"])
    for i in range(0, len(prompts), batch):
        ps, ss = list(prompts[i:i + batch]), list(seeds[i:i + batch])
        gens = [torch.Generator(adapter.device).manual_seed(int(s)) for s in ss]
        z = torch.cat([adapter.initial_noise(1, generator=g_) for g_ in gens])
        cond = adapter.encode_prompts(ps)
        # Fresh noise per step comes from the first image's generator: batched sampling stays reproducible for a
        # given batching; `fixed` and `ddim` noise are reproducible per image regardless.
        # fp32 latents and times as in training; the adapter casts the latents for the network.
        x = generate(adapter.bind(gen, cond).velocity, z, steps, num_steps=int(meta["num_steps"]),
                     init_timestep=int(meta["init_timestep"]), noise=meta["noise"], generator=gens[0])
        images = ((adapter.decode(x) * 127.5 + 128).clamp(0, 255)).to(torch.uint8).cpu()
        yield from zip(ss, ps, images, strict=True)

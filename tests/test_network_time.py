"""Every network sees the same time value in training, in evaluation sampling and in ``generate``: the exact fp32
``time_scale * t`` (750.0 for ``t = 0.75`` on SANA and SD3, 0.75 on SANA-Sprint teachers and FLUX), whatever the
dtype of the weights and latents. bf16 holds 750 as 752, so a time built in the latents' dtype would hand a bf16
student another time than the one it was trained at.

The values are read from the transformers themselves: a module forward hook records the ``timestep`` keyword each
call receives and the input of the sinusoidal ``Timesteps`` projection, i.e. what is embedded (FLUX scales its
``timestep`` by 1000 inside, in the dtype of its hidden states; that must agree between training and sampling
too)."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sidrepro.distill.config import RunConfig
from sidrepro.distill.trainer import autocast, weight_dtype
from sidrepro.evaluate.sampling import ModelSpec, load_sampler
from sidrepro.sid import SiD, SiDConfig, step_times
from sidrepro.teachers.load import load_teacher
from sidrepro.teachers.student import STUDENT_FILE

# Each zoo family and the factor between flow time and the ``timestep`` its transformer receives.
FAMILIES = {"tiny-sana": 1000.0, "tiny-sana-sprint-teacher": 1.0, "tiny-sd3": 1000.0, "tiny-sd35": 1000.0,
            "tiny-flux": 1.0}
# Times the trainer may draw for the teacher and fake network; bf16 rounds 0.999 to 1 and 750 to 752.
DRAWN = [0.999, 0.75, 0.5, 0.25]
# 999 gives the grid 1, 0.75, 0.5, 0.25; 800 one that bf16 cannot hold (0.8008, 0.6006, ...).
INIT_TIMESTEPS = (999, 800)
PROMPTS = ["a red cube on a table", "two cats asleep"]
CPU = torch.device("cpu")


def _exact(times: list[float], scale: float) -> torch.Tensor:
    """What training computes: the fp32 time times the scale, in fp32."""
    return torch.tensor(times, dtype=torch.float32) * scale


@contextmanager
def _recorded():
    """Record every transformer forward in this block: the ``timestep`` keyword it received and the first input of
    its ``Timesteps`` projection (FLUX calls that module again for its guidance value). Global module hooks, so
    networks loaded inside a call (``generate_images``) are seen too."""
    from diffusers.models.embeddings import Timesteps
    from diffusers.models.modeling_utils import ModelMixin
    from torch.nn.modules.module import register_module_forward_hook

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    embedded: list[torch.Tensor] = []

    def on_forward(module, args, kwargs, _output):
        if isinstance(module, Timesteps):
            embedded.append(args[0].detach().clone())
        elif isinstance(module, ModelMixin) and "timestep" in kwargs:
            seen.append((kwargs["timestep"].detach().clone(), embedded[0]))
            embedded.clear()

    handle = register_module_forward_hook(on_forward, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _student_folder(teacher: str, folder: Path, out: Path, init_timestep: int) -> Path:
    """An exported-student folder whose generator is still the teacher (SiD's initialisation)."""
    shutil.copytree(folder, out)
    meta = {"teacher": teacher, "num_steps": 4, "init_timestep": init_timestep, "noise": "fresh", "resolution": 64,
            "checkpoint": "init"}
    (out / STUDENT_FILE).write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_zoo) -> tuple[str, Path, float]:
    return request.param, tiny_zoo[request.param], FAMILIES[request.param]


def _training_generate(name: str, folder: Path, init_timestep: int, latents_dtype: torch.dtype):
    """The generator's calls in a training iteration under AMP: fp32 weights, bf16 autocast."""
    cfg = RunConfig(teacher=name, precision="amp")
    adapter = load_teacher(name, folder, dtype=weight_dtype(cfg))
    net = adapter.load_transformer().eval().requires_grad_(False)
    method = SiD(SiDConfig(num_steps=4, init_timestep=init_timestep))
    z = torch.randn((2, *adapter.latent_shape()), generator=torch.Generator().manual_seed(0)).to(latents_dtype)
    with _recorded() as seen, autocast(cfg, CPU), torch.no_grad():
        method.generate(adapter.bind(net, adapter.encode_prompts(PROMPTS)).velocity, z, 4,
                        generator=torch.Generator().manual_seed(1))
    return seen


@pytest.mark.parametrize("init_timestep", INIT_TIMESTEPS)
def test_generator_times_agree_in_training_sampling_and_generate(family, init_timestep, tmp_path):
    from sidrepro.distill.export import generate_images

    name, folder, scale = family
    exact = _exact(step_times(4, init_timestep), scale)
    student = _student_folder(name, folder, tmp_path / "student", init_timestep)

    paths = {"training": _training_generate(name, folder, init_timestep, torch.float32)}
    sampler = load_sampler(ModelSpec.student(student), dtype=torch.bfloat16)
    with _recorded() as seen:
        sampler(PROMPTS, [0, 1])
    paths["evaluation sampling, bf16"] = seen
    with _recorded() as seen:
        list(generate_images(student, PROMPTS, [0, 1], batch=2, dtype=torch.bfloat16))
    paths["generate, bf16"] = seen
    # The same generator call on latents already in bf16: the times stay fp32 and exact.
    paths["training, bf16 latents"] = _training_generate(name, folder, init_timestep, torch.bfloat16)

    reference = paths["training"]
    for where, seen in paths.items():
        assert len(seen) == 4, f"{where}: {len(seen)} forwards for 4 steps"
        got = torch.stack([timestep.float() for timestep, _ in seen])
        assert torch.equal(got, exact[:, None].expand(4, 2)), (
            f"{name}, {where}: the transformer got {got[:, 0].tolist()}, training computes {exact.tolist()}")
        assert {timestep.dtype for timestep, _ in seen} == {torch.float32}, f"{name}, {where}: timestep not fp32"
        for i, (_, embedded) in enumerate(seen):
            assert torch.equal(embedded, reference[i][1]), (
                f"{name}, {where}, step {i}: embeds {embedded.tolist()}, training {reference[i][1].tolist()}")


@pytest.mark.parametrize("scale", [1.0, 4.5])
def test_teacher_and_fake_network_times_are_exact_under_amp(family, scale):
    """The score networks of the SiD losses at the trainer's drawn times, with and without CFG (one batched 2B
    pass with the unconditional half first), in fp32 and bf16 latents."""
    name, folder, factor = family
    cfg = RunConfig(teacher=name, precision="amp")
    adapter = load_teacher(name, folder, dtype=weight_dtype(cfg))
    net = adapter.load_transformer().eval().requires_grad_(False)
    cond = adapter.encode_prompts(PROMPTS * 2)
    t = torch.tensor(DRAWN)
    x_t = torch.randn((len(t), *adapter.latent_shape()), generator=torch.Generator().manual_seed(0))
    exact = _exact(DRAWN, factor)
    passes = 1 if adapter.cfg_scale(scale) == 1 else 2
    for latents_dtype in (torch.float32, torch.bfloat16):
        with _recorded() as seen, autocast(cfg, CPU), torch.no_grad():
            adapter.bind(net, cond, adapter.empty(len(t)))(x_t.to(latents_dtype), t, scale=scale)
        (timestep, _), = seen
        assert torch.equal(timestep.float(), exact.repeat(passes)), (
            f"{name}, {latents_dtype} latents: the transformer got {timestep.tolist()}, exact {exact.tolist()}")
        assert timestep.dtype == torch.float32, f"{name}, {latents_dtype} latents: timestep in {timestep.dtype}"


def test_a_bf16_time_is_scaled_in_fp32(family):
    """A caller holding ``t`` in bf16 (0.75 is exact there) still hands the network 750.0, not bf16's 752."""
    name, folder, factor = family
    adapter = load_teacher(name, folder, dtype=torch.bfloat16)
    net = adapter.load_transformer().eval().requires_grad_(False)
    t = torch.tensor([0.75, 0.5], dtype=torch.bfloat16)
    x_t = torch.randn((2, *adapter.latent_shape()), generator=torch.Generator().manual_seed(0))
    with _recorded() as seen, torch.no_grad():
        adapter.bind(net, adapter.encode_prompts(PROMPTS)).velocity(x_t.bfloat16(), t)
    (timestep, _), = seen
    assert timestep.dtype == torch.float32 and torch.equal(timestep, _exact([0.75, 0.5], factor)), (
        f"{name}: the transformer got {timestep.tolist()} ({timestep.dtype})")

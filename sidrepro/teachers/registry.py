"""Every model the paper's tables name: the teachers SiD distils and the public few-step baselines they are compared
with. Torch-free, so the command line and the workflow can read it cheaply.

Revisions: a registry entry names the branch it was written against (``main``); the first ``sidrepro fetch``
resolves it to a commit hash and records that hash in the lock file, and every later fetch, on any machine that
shares the lock file, gets exactly that commit. Commit the lock file with your results.

Sources: hub ids, resolutions and time conventions from the official SiD-DiT code (spec §1.3, §7.3, §10); teacher
sampling steps from the paper's tables; teacher guidance scales and the baselines' steps and guidance from the
models' own cards. Values that no stored source settles carry a ``note``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("sana", "sd3", "flux")
FLUX_GUIDANCE_MODES = ("embed_and_cfg", "embed_only")
BASELINE_FAMILIES = ("sana_sprint", "sd3", "flux")


@dataclass(frozen=True)
class TeacherEntry:
    """A teacher of the paper, or a tiny zoo model standing in for one."""

    name: str
    family: str
    hub_id: str
    revision: str = "main"
    resolution: int = 512
    # The value the transformer receives is ``time_scale * t`` for flow time t in [0, 1] (spec §1.3). FLUX scales
    # internally and takes raw t. Set per teacher, never guessed from the model path (spec correction 4).
    time_scale: float = 1000.0
    sample_steps: int = 20  # the teacher row of the tables: the family's own multi-step sampler
    sample_guidance: float = 4.5
    max_sequence_length: int = 300  # text tokens: SANA 300, SD3 77 (T5 part), FLUX 512
    # FLUX only: "embed_and_cfg" = guidance embedding equals the CFG scale, plus true CFG when the scale is not 0
    # or 1 (the official code); "embed_only" = guidance embedding only, one pass.
    flux_guidance: str = "embed_and_cfg"
    gated: bool = False
    params_b: float = 0.0  # transformer parameters, billions (the tables' "params" column)
    download_gb: float = 0.0
    min_gpu_mem_gb: float = 0.0  # training: teacher + fake + generator, bf16, FSDP over 8 GPUs
    allow_patterns: tuple[str, ...] = (
        "model_index.json", "scheduler/*", "transformer/*", "vae/*", "text_encoder*/*", "tokenizer*/*",
    )
    note: str = ""
    zoo: bool = False  # a tiny model built offline by ``sidrepro zoo`` (hub_id is then its zoo name)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"teacher {self.name!r}: unknown family {self.family!r}; choose one of "
                             f"{', '.join(FAMILIES)}")
        if self.flux_guidance not in FLUX_GUIDANCE_MODES:
            raise ValueError(f"teacher {self.name!r}: flux_guidance must be one of {', '.join(FLUX_GUIDANCE_MODES)}")
        if self.time_scale <= 0 or self.resolution < 8 or self.sample_steps < 1:
            raise ValueError(f"teacher {self.name!r}: need time_scale > 0, resolution >= 8, sample_steps >= 1")


@dataclass(frozen=True)
class BaselineEntry:
    """A public few-step model that a table compares with; sampled through its diffusers pipeline."""

    name: str
    family: str  # "sana_sprint", "sd3" or "flux": which pipeline samples it
    hub_id: str
    steps: int
    guidance: float
    revision: str = "main"
    resolution: int = 1024
    # LoRA baselines: the adapter repo and file, loaded on top of ``hub_id`` (the base model).
    lora_id: str = ""
    lora_weight_name: str = ""
    lora_revision: str = "main"
    lora_format: str = "diffusers"  # "diffusers": pipe.load_lora_weights; "peft": a PEFT adapter on the transformer
    gated: bool = False
    extra: dict[str, float | int | str] = field(default_factory=dict)  # pipeline call arguments, e.g. max_seq
    allow_patterns: tuple[str, ...] = (
        "model_index.json", "scheduler/*", "transformer/*", "vae/*", "text_encoder*/*", "tokenizer*/*",
    )
    download_gb: float = 30.0
    min_gpu_mem_gb: float = 24.0  # sampling only
    note: str = ""
    zoo: bool = False  # a tiny stand-in built by ``sidrepro zoo`` (hub_id and lora_id are then zoo names)

    def __post_init__(self) -> None:
        if self.family not in BASELINE_FAMILIES:
            raise ValueError(f"baseline {self.name!r}: unknown family {self.family!r}; choose one of "
                             f"{', '.join(BASELINE_FAMILIES)}")
        if self.lora_format not in ("diffusers", "peft"):
            raise ValueError(f"baseline {self.name!r}: lora_format must be 'diffusers' or 'peft'")
        if self.steps < 1:
            raise ValueError(f"baseline {self.name!r}: steps must be >= 1")


_SANA_NOTE = "guidance 4.5 and 20 steps: SanaPipeline defaults (the paper's tables give 20 steps)"
_SPRINT_TEACHER_NOTE = ("raw time (time_scale 1); check transformer/config.json has guidance_embeds=false; "
                        "guidance 4.5 not printed in the paper")

TEACHERS: dict[str, TeacherEntry] = {e.name: e for e in [
    TeacherEntry("sana-0.6b", "sana", "Efficient-Large-Model/Sana_600M_512px_diffusers", resolution=512,
                 time_scale=1000.0, sample_steps=20, sample_guidance=4.5, max_sequence_length=300, params_b=0.6,
                 download_gb=12.0, min_gpu_mem_gb=24.0, note=_SANA_NOTE),
    TeacherEntry("sana-1.6b", "sana", "Efficient-Large-Model/Sana_1600M_512px_diffusers", resolution=512,
                 time_scale=1000.0, sample_steps=20, sample_guidance=4.5, max_sequence_length=300, params_b=1.6,
                 download_gb=16.0, min_gpu_mem_gb=40.0, note=_SANA_NOTE + "; resolution 512 inferred"),
    TeacherEntry("sana-sprint-0.6b-teacher", "sana", "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_teacher_diffusers",
                 resolution=1024, time_scale=1.0, sample_steps=20, sample_guidance=4.5, max_sequence_length=300,
                 params_b=0.6, download_gb=12.0, min_gpu_mem_gb=40.0, note=_SPRINT_TEACHER_NOTE),
    TeacherEntry("sana-sprint-1.6b-teacher", "sana", "Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers",
                 resolution=1024, time_scale=1.0, sample_steps=20, sample_guidance=4.5, max_sequence_length=300,
                 params_b=1.6, download_gb=16.0, min_gpu_mem_gb=60.0, note=_SPRINT_TEACHER_NOTE),
    TeacherEntry("sd3-medium", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", resolution=1024,
                 time_scale=1000.0, sample_steps=28, sample_guidance=7.0, max_sequence_length=77, gated=True,
                 params_b=2.0, download_gb=20.0, min_gpu_mem_gb=60.0,
                 note="resolution 1024 inferred (spec §7.3); guidance 7.0 from the model card"),
    TeacherEntry("sd3.5-medium", "sd3", "stabilityai/stable-diffusion-3.5-medium", resolution=1024,
                 time_scale=1000.0, sample_steps=40, sample_guidance=4.5, max_sequence_length=77, gated=True,
                 params_b=2.5, download_gb=22.0, min_gpu_mem_gb=60.0,
                 note="resolution 1024 inferred; 40 steps from the paper, guidance 4.5 from the model card"),
    TeacherEntry("sd3.5-large", "sd3", "stabilityai/stable-diffusion-3.5-large", resolution=1024,
                 time_scale=1000.0, sample_steps=28, sample_guidance=3.5, max_sequence_length=77, gated=True,
                 params_b=8.1, download_gb=55.0, min_gpu_mem_gb=80.0,
                 note="resolution 1024 inferred; guidance 3.5 from the model card"),
    TeacherEntry("flux-dev-512", "flux", "black-forest-labs/FLUX.1-dev", resolution=512, time_scale=1.0,
                 sample_steps=28, sample_guidance=3.5, max_sequence_length=512, gated=True, params_b=12.0,
                 download_gb=58.0, min_gpu_mem_gb=80.0,
                 note="guidance 3.5 = FluxPipeline default; the distillation guidance values are not in the code"),
    TeacherEntry("flux-dev-1024", "flux", "black-forest-labs/FLUX.1-dev", resolution=1024, time_scale=1.0,
                 sample_steps=28, sample_guidance=3.5, max_sequence_length=512, gated=True, params_b=12.0,
                 download_gb=58.0, min_gpu_mem_gb=80.0, note="as flux-dev-512"),
]}

# Tiny stand-ins with each family's conventions, for tests, CI and the smoke workflow (64 px images).
_TINY = dict(resolution=64, sample_steps=4, zoo=True, download_gb=0.0, min_gpu_mem_gb=0.0)
TEACHERS.update({e.name: e for e in [
    TeacherEntry("tiny-sana", "sana", "tiny-sana", time_scale=1000.0, sample_guidance=4.5, max_sequence_length=300,
                 **_TINY),
    TeacherEntry("tiny-sana-sprint-teacher", "sana", "tiny-sana-sprint-teacher", time_scale=1.0,
                 sample_guidance=4.5, max_sequence_length=300, **_TINY),
    TeacherEntry("tiny-sd3", "sd3", "tiny-sd3", time_scale=1000.0, sample_guidance=7.0, max_sequence_length=77,
                 **_TINY),
    TeacherEntry("tiny-sd35", "sd3", "tiny-sd35", time_scale=1000.0, sample_guidance=4.5, max_sequence_length=77,
                 **_TINY),
    TeacherEntry("tiny-flux", "flux", "tiny-flux", time_scale=1.0, sample_guidance=3.5, max_sequence_length=512,
                 **_TINY),
]})

BASELINES: dict[str, BaselineEntry] = {e.name: e for e in [
    BaselineEntry("sana-sprint-0.6b-1step", "sana_sprint", "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers",
                  steps=1, guidance=4.5, note="guidance 4.5 = SanaSprintPipeline default (a guidance embedding)"),
    BaselineEntry("sana-sprint-0.6b-4step", "sana_sprint", "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers",
                  steps=4, guidance=4.5),
    BaselineEntry("sana-sprint-1.6b-1step", "sana_sprint", "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
                  steps=1, guidance=4.5),
    BaselineEntry("sana-sprint-1.6b-4step", "sana_sprint", "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
                  steps=4, guidance=4.5),
    BaselineEntry("flash-sd3", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", steps=4, guidance=0.0,
                  lora_id="jasperai/flash-sd3", lora_format="peft", gated=True,
                  note="a PEFT adapter on the SD3-Medium transformer; 4 steps without CFG per its card (the card "
                       "also drops T5; kept here, as for every SD3 row)"),
    BaselineEntry("sd3.5-medium-turbo", "sd3", "tensorart/stable-diffusion-3.5-medium-turbo", steps=8, guidance=1.0,
                  note="8 steps from the paper; guidance 1.0 (no CFG) assumed, not printed in the paper"),
    BaselineEntry("sd3.5-large-turbo", "sd3", "stabilityai/stable-diffusion-3.5-large-turbo", steps=4, guidance=0.0,
                  gated=True, note="4 steps, guidance 0 per the model card"),
    BaselineEntry("flux-schnell", "flux", "black-forest-labs/FLUX.1-schnell", steps=4, guidance=0.0,
                  extra={"max_sequence_length": 256}, note="4 steps, guidance 0, 256 T5 tokens per the model card"),
    BaselineEntry("flux-turbo-alpha", "flux", "black-forest-labs/FLUX.1-dev", steps=4, guidance=3.5,
                  lora_id="alimama-creative/FLUX.1-Turbo-Alpha", lora_weight_name="diffusion_pytorch_model.safetensors",
                  gated=True, note="the card recommends 8 steps; the paper samples it at 4"),
    BaselineEntry("hyper-flux", "flux", "black-forest-labs/FLUX.1-dev", steps=4, guidance=3.5,
                  lora_id="ByteDance/Hyper-SD", lora_weight_name="Hyper-FLUX.1-dev-8steps-lora.safetensors",
                  gated=True, extra={"lora_scale": 0.125},
                  note="the smallest published Hyper-FLUX LoRA is the 8-step one (scale 0.125 per its card); the "
                       "paper samples it at 4 steps"),
]}

_TINY_BASELINE = dict(resolution=64, zoo=True, download_gb=0.0, min_gpu_mem_gb=0.0)
BASELINES.update({e.name: e for e in [
    BaselineEntry("tiny-sana-sprint-1step", "sana_sprint", "tiny-sana-sprint", steps=1, guidance=4.5,
                  **_TINY_BASELINE),
    BaselineEntry("tiny-sana-sprint-4step", "sana_sprint", "tiny-sana-sprint", steps=4, guidance=4.5,
                  **_TINY_BASELINE),
    BaselineEntry("tiny-flux-schnell", "flux", "tiny-flux-schnell", steps=4, guidance=0.0,
                  extra={"max_sequence_length": 256}, **_TINY_BASELINE),
    BaselineEntry("tiny-flux-lora", "flux", "tiny-flux", steps=4, guidance=3.5, lora_id="tiny-flux-lora",
                  lora_weight_name="pytorch_lora_weights.safetensors", extra={"lora_scale": 0.5}, **_TINY_BASELINE),
]})


def _unknown(kind: str, name: str, known: dict) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")


def get_teacher(name: str) -> TeacherEntry:
    """The registry entry for ``name``; an unknown name gets an error listing the known ones."""
    if name not in TEACHERS:
        raise _unknown("teacher", name, TEACHERS)
    return TEACHERS[name]


def get_baseline(name: str) -> BaselineEntry:
    """The baseline entry for ``name``; an unknown name gets an error listing the known ones."""
    if name not in BASELINES:
        raise _unknown("baseline", name, BASELINES)
    return BASELINES[name]

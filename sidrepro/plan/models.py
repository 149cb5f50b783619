"""What the plan needs to know about each model of a config: which real transformer architecture it runs
(``sidrepro/teachers/architectures.py``), at which resolution, with how many parameters and tokens, and how many
network passes one sampled image costs. Torch is imported only to count an architecture's parameters (on the meta
device, once per process), as the memory model does."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..distill.memory import _tokens
from ..teachers.architectures import ARCHITECTURES
from ..teachers.registry import BASELINES, TEACHERS

# The architecture each real teacher and baseline samples or trains with. SANA-Sprint teachers are SANA
# transformers at 1024 px; the FLUX.1-dev LoRA baselines and FLUX.1-schnell share FLUX.1-dev's transformer.
ARCH_OF: dict[str, str] = {
    "sana-0.6b": "sana-0.6b", "sana-1.6b": "sana-1.6b",
    "sana-sprint-0.6b-teacher": "sana-0.6b", "sana-sprint-1.6b-teacher": "sana-1.6b",
    "sd3-medium": "sd3-medium", "sd3.5-medium": "sd3.5-medium", "sd3.5-large": "sd3.5-large",
    "flux-dev-512": "flux-dev-1024", "flux-dev-1024": "flux-dev-1024",
    "sana-sprint-0.6b-1step": "sana-0.6b", "sana-sprint-0.6b-4step": "sana-0.6b",
    "sana-sprint-1.6b-1step": "sana-1.6b", "sana-sprint-1.6b-4step": "sana-1.6b",
    "flash-sd3": "sd3-medium", "sd3.5-medium-turbo": "sd3.5-medium", "sd3.5-large-turbo": "sd3.5-large",
    "flux-schnell": "flux-dev-1024", "flux-turbo-alpha": "flux-dev-1024", "hyper-flux": "flux-dev-1024",
}
LORA_GB = 1.0  # a LoRA adapter repo (not in the registry): assumed about 1 GB


def family(arch: str) -> str:
    """``sana`` (linear-attention DiT, text by cross-attention) or ``mmdit`` (SD3 and FLUX: joint text-image
    attention): the grouping the plan extrapolates within."""
    return "sana" if ARCHITECTURES[arch].transformer_class.startswith("Sana") else "mmdit"


def tokens(arch: str, resolution: int, text_tokens: int | None = None) -> int:
    """Tokens one sample feeds the transformer at ``resolution`` px: image tokens, plus the text tokens in the
    joint stream of SD3/FLUX (the memory model's count)."""
    img, txt = _tokens(ARCHITECTURES[arch], resolution)
    return img + (txt if text_tokens is None or not txt else text_tokens)


@cache
def params(arch: str) -> int:
    """Exact transformer parameters of an architecture (built on the meta device)."""
    from ..distill.memory import _params

    return _params(ARCHITECTURES[arch])


@dataclass(frozen=True)
class SampledModel:
    """A measured row of a table as the sampler runs it: transformer, resolution, passes per image."""

    model: str  # the workflow's model id
    arch: str | None  # None: a tiny zoo model (no real architecture)
    resolution: int
    steps: int
    passes_per_step: int  # 2 under classifier-free guidance (a conditional and an unconditional pass)
    text_tokens: int | None = None  # when the sampler uses fewer text tokens than the architecture

    @property
    def forwards(self) -> int:
        """Transformer passes (one sample each) per image."""
        return self.steps * self.passes_per_step


def sampled_model(model: str, student_steps: dict[tuple[str, str], tuple[int, int]]) -> SampledModel:
    """How ``model`` (a workflow model id) samples: a student with its run's ``num_steps`` and no CFG at its run's
    resolution (``student_steps[(teacher, setting)] = (num_steps, resolution)``); a teacher row with its registry
    steps and guidance (CFG doubles the passes, except FLUX.1-dev, which takes the guidance as an embedding); a
    baseline with its pipeline's steps (SANA-Sprint and FLUX take guidance as an embedding, SD3 runs CFG above 1)."""
    kind, _, name = model.partition("--")
    if kind == "teacher":
        e = TEACHERS[name]
        cfg = 2 if e.family != "flux" and e.sample_guidance > 1 else 1
        return SampledModel(model, None if e.zoo else ARCH_OF[name], e.resolution, e.sample_steps, cfg)
    if kind == "baseline":
        b = BASELINES[name]
        cfg = 2 if b.family == "sd3" and b.guidance > 1 else 1
        text = b.extra.get("max_sequence_length")
        return SampledModel(model, None if b.zoo else ARCH_OF[name], b.resolution, b.steps, cfg,
                            int(text) if text is not None else None)
    steps, resolution = student_steps[(kind, name)]
    return SampledModel(model, None if TEACHERS[kind].zoo else ARCH_OF[kind], resolution, steps, 1)


def repos_of(name: str) -> dict[str, float]:
    """Hub repo -> download size (GB) of one teacher or baseline: the registry's figure (a baseline built on a
    teacher's repo downloads what the teacher entry says; the baselines' 30 GB is a default), a LoRA repo assumed
    ``LORA_GB``; nothing for a tiny zoo model (built, not downloaded)."""
    if name in TEACHERS:
        e = TEACHERS[name]
        return {} if e.zoo else {e.hub_id: e.download_gb}
    b = BASELINES[name]
    if b.zoo:
        return {}
    teacher_gb = {e.hub_id: e.download_gb for e in TEACHERS.values() if not e.zoo}
    return {b.hub_id: teacher_gb.get(b.hub_id, b.download_gb), **({b.lora_id: LORA_GB} if b.lora_id else {})}


def snapshot_repos(config: dict) -> dict[str, float]:
    """Every hub repo the config's teachers and baselines download, each once (rows share snapshots)."""
    repos: dict[str, float] = {}
    for name in [*config["teachers"], *config["baselines"]]:
        for repo, gb in repos_of(name).items():
            repos[repo] = max(repos.get(repo, 0.0), gb)
    return repos

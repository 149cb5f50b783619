"""One protocol for every teacher family: prompt encoding, velocity with guidance and pooled features, VAE, latent
shapes and the family's own multi-step sampler.

An adapter wraps a diffusers pipeline loaded *without* its transformer (text encoders, tokenizers, VAE, scheduler)
and calls whichever transformer it is handed: teacher, fake-score network and generator are three transformers of
one class, so one adapter serves all three. Prompt encoding is the pipeline's own ``encode_prompt``, so the
conditioning is what diffusers would compute. Latents are always ``(B, C, H, W)`` in the VAE's scaled space;
FLUX packs and unpacks inside its adapter. Nothing here knows about SiD: the adapter only answers "what is the
velocity of this network here".
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .registry import TeacherEntry


@dataclass
class Conditioning:
    """Text conditioning of a batch: token embeddings ``(B, L, D)``, plus SANA's attention mask ``(B, L)`` or the
    pooled vector ``(B, P)`` of SD3/FLUX."""

    embeds: Tensor
    mask: Tensor | None = None
    pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> Conditioning:
        return Conditioning(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                               for f in fields(self)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move to ``device``; floating tensors (not the mask) also to ``dtype``."""
        out = self._map(lambda x: x.to(device))
        if dtype is not None:
            out = replace(out, embeds=out.embeds.to(dtype),
                          pooled=None if out.pooled is None else out.pooled.to(dtype))
        return out

    def __getitem__(self, index) -> Conditioning:
        return self._map(lambda x: x[index])

    def expand(self, batch: int) -> Conditioning:
        """A batch of ``batch`` copies of a single conditioning (no memory copy)."""
        if len(self) != 1:
            raise ValueError(f"expand needs a conditioning of batch 1, got {len(self)}")
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch; all items must carry the same fields."""
        def join(name: str):
            parts = [getattr(c, name) for c in items]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"cannot concatenate conditionings with and without {name!r}")
            return torch.cat(parts)
        return Conditioning(**{f.name: join(f.name) for f in fields(Conditioning)})


@contextmanager
def pooled_features(net: nn.Module):
    """Capture the discriminator features of one forward (spec §6.1): the input of the final projection
    ``proj_out`` (after the timestep-modulated ``norm_out``), averaged over image tokens, ``(B, D)``.

    Yields a list that holds the features after the forward. A hook keeps diffusers' forward untouched; every
    family's ``proj_out`` sees image tokens only (FLUX drops its text tokens before ``norm_out``)."""
    box: list[Tensor] = []

    def hook(_module, args):
        box.append(args[0].mean(dim=1))

    handle = net.proj_out.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


class TeacherAdapter(ABC):
    """A teacher family behind one protocol. Subclasses name their pipeline and transformer classes and implement
    prompt encoding, the raw transformer call and the timestep grid of their multi-step sampler."""

    pipeline_class: ClassVar[str]
    transformer_class: ClassVar[str]

    def __init__(self, entry: TeacherEntry, folder: str | Path, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, text_dtype: torch.dtype | None = None):
        import diffusers

        self.entry = entry
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.text_dtype = text_dtype or dtype
        self._transformer_config = getattr(diffusers, self.transformer_class).load_config(self.folder / "transformer")
        self.check_config(self._transformer_config)
        pipe_cls = getattr(diffusers, self.pipeline_class)
        self.pipe = pipe_cls.from_pretrained(self.folder, transformer=None, dtype=self.text_dtype)
        self.pipe.set_progress_bar_config(disable=True)
        for module in self.pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(False).eval().to(self.device)
        vae_dtype = torch.float32 if dtype == torch.float16 else dtype  # fp16 VAEs overflow
        if getattr(self.pipe, "vae", None) is not None and self.pipe.vae.dtype != vae_dtype:
            self.pipe.vae.to(dtype=vae_dtype)
        self._empty: Conditioning | None = None
        self._parked = False
        self._visits = 0

    # --- where the encoders live -------------------------------------------------------------------------------
    def _encoder_modules(self) -> list[nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, nn.Module)]

    def park_encoders(self) -> None:
        """Keep the text encoders and the VAE on the CPU and bring them to the device only to encode or decode (the
        official SD3/FLUX loops do this; it frees e.g. 19 GB of fp32 T5-XXL per GPU during training)."""
        self._parked = True
        for module in self._encoder_modules():
            module.to("cpu")

    @contextmanager
    def _encoders_on_device(self):
        # Re-entrant: encode_prompts may fetch the empty-prompt conditioning from inside its own visit.
        if not self._parked or self.device.type == "cpu" or self._visits:
            self._visits += 1
            try:
                yield
            finally:
                self._visits -= 1
            return
        modules = self._encoder_modules()
        for module in modules:
            module.to(self.device)
        self._visits += 1
        try:
            yield
        finally:
            self._visits -= 1
            for module in modules:
                module.to("cpu")
            torch.cuda.empty_cache()

    def check_config(self, config: dict[str, Any]) -> None:
        """Refuse a snapshot whose transformer does not fit the registry entry (before anything heavy loads)."""
        return None

    # --- networks ----------------------------------------------------------------------------------------
    def load_transformer(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A fresh copy of the transformer from the snapshot (teacher, fake network and generator each load one)."""
        import diffusers

        cls = getattr(diffusers, self.transformer_class)
        net = cls.from_pretrained(self.folder, subfolder="transformer", dtype=dtype or self.dtype)
        return net.to(self.device)

    def empty_transformer(self, dtype: torch.dtype | None = None) -> nn.Module:
        """The transformer as ``from_pretrained`` builds it before reading any weight: parameters on the meta device
        (no memory), buffers real on the CPU as ``__init__`` computes them (rotary tables, position embeddings),
        everything in ``dtype``. Fill it from :attr:`transformer_folder`'s safetensors."""
        import diffusers
        from accelerate import init_empty_weights

        cls = getattr(diffusers, self.transformer_class)
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype or self.dtype)  # what from_pretrained does: buffers come out in that dtype
        try:
            with init_empty_weights(include_buffers=False):
                net = cls.from_config(self._transformer_config)
        finally:
            torch.set_default_dtype(before)
        net.register_to_config(_name_or_path=self.folder)
        return net.eval()

    @property
    def transformer_folder(self) -> Path:
        """The snapshot's ``transformer/`` folder (config and safetensors weights)."""
        return self.folder / "transformer"

    @property
    def transformer_config(self) -> dict[str, Any]:
        return dict(self._transformer_config)

    # --- text --------------------------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, prompts: list[str]) -> Conditioning:
        """The family's encoder on non-empty prompts."""

    @abstractmethod
    def _encode_empty(self) -> Conditioning:
        """The unconditional (empty-prompt) conditioning, batch 1."""

    def empty(self, batch: int = 1) -> Conditioning:
        """``batch`` copies of the empty-prompt conditioning, encoded once and cached."""
        if self._empty is None:
            with torch.no_grad(), self._encoders_on_device():
                self._empty = self._encode_empty().to(self.device, self.dtype)
        return self._empty.expand(batch)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode a batch of prompts; prompts that are empty after stripping get the empty-prompt conditioning
        (the official on-the-fly behaviour, spec §5.2)."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt")
        with self._encoders_on_device():
            return self._encode_batch(prompts)

    def _encode_batch(self, prompts: list[str]) -> Conditioning:
        keep = [i for i, p in enumerate(prompts) if p.strip()]
        if len(keep) == len(prompts):
            return self._encode(prompts).to(self.device, self.dtype)
        empty = self.empty(len(prompts))
        if not keep:
            return Conditioning.cat([empty[i:i + 1] for i in range(len(prompts))])
        enc = self._encode([prompts[i] for i in keep]).to(self.device, self.dtype)
        rows = {j: enc[n:n + 1] for n, j in enumerate(keep)}
        return Conditioning.cat([rows.get(i, empty[i:i + 1]) for i in range(len(prompts))])

    # --- shapes and time ---------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self._transformer_config["in_channels"])

    def latent_shape(self, resolution: int | None = None) -> tuple[int, int, int]:
        """``(C, H, W)`` of the latent of a square image of ``resolution`` pixels (default: the entry's)."""
        res = resolution or self.entry.resolution
        f = self.vae_scale_factor * self.latent_multiple
        if res % f:
            raise ValueError(f"{self.entry.name}: resolution {res} is not a multiple of {f}")
        return (self.latent_channels, res // self.vae_scale_factor, res // self.vae_scale_factor)

    latent_multiple: ClassVar[int] = 1  # FLUX packs 2x2 latent patches

    def initial_noise(self, batch: int, resolution: int | None = None, *,
                      generator: torch.Generator | None = None) -> Tensor:
        """Standard normal latents ``(B, C, H, W)`` in fp32, as the pipelines draw them."""
        return torch.randn((batch, *self.latent_shape(resolution)), generator=generator, device=self.device,
                           dtype=torch.float32)

    # --- velocity ----------------------------------------------------------------------------------------
    @abstractmethod
    def _call(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning,
              guidance_embed: float | None) -> Tensor:
        """One transformer forward: latents ``(B, C, H, W)`` and the time value the network expects -> velocity
        ``(B, C, H, W)`` in the network's dtype."""

    def forward(self, net: nn.Module, x_t: Tensor, net_time: Tensor, cond: Conditioning, *,
                guidance_embed: float | None = None, features: bool = False) -> tuple[Tensor, Tensor | None]:
        """Velocity (and pooled features) of ``net`` at network time ``net_time`` (not flow time). The time reaches
        the transformer in fp32 whatever the dtype of the weights and latents (training hands it fp32)."""
        net_time = net_time.float()
        if not features:
            return self._call(net, x_t, net_time, cond, guidance_embed), None
        with pooled_features(net) as box:
            v = self._call(net, x_t, net_time, cond, guidance_embed)
        return v, box[-1]

    def network_time(self, t: Tensor) -> Tensor:
        """The value the transformer receives for flow time ``t`` in [0, 1], in fp32: ``time_scale * t`` (x1000 for
        SANA and SD3, raw for SANA-Sprint teachers and FLUX). Scaling in bf16 would round 750 to 752."""
        return t.float() * self.entry.time_scale

    def velocity(self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, *, scale: float = 1.0,
                 uncond: Conditioning | None = None, features: bool = False,
                 net_time: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """CFG-guided velocity at flow time ``t`` ``(B,)`` (spec §1.2): one conditional pass at scale 1, one
        unconditional pass at 0, otherwise one batched pass of 2B with the unconditional half first. Features come
        from the conditional half. ``uncond`` defaults to the empty-prompt conditioning."""
        nt = self.network_time(t) if net_time is None else net_time
        embed = self.guidance_embed(scale)
        scale = self.cfg_scale(scale)
        if scale == 1:
            return self.forward(net, x_t, nt, cond, guidance_embed=embed, features=features)
        uncond = self.empty(len(cond)) if uncond is None else uncond
        if scale == 0 and not features:
            return self.forward(net, x_t, nt, uncond, guidance_embed=embed)
        v, h = self.forward(net, torch.cat([x_t, x_t]), torch.cat([nt, nt]), Conditioning.cat([uncond, cond]),
                            guidance_embed=embed, features=features)
        v_u, v_c = v.chunk(2)
        return v_u + scale * (v_c - v_u), None if h is None else h.chunk(2)[1]

    def guidance_embed(self, scale: float) -> float | None:
        """The guidance-embedding value for a call at ``scale`` (FLUX.1-dev only; ``None`` elsewhere)."""
        return None

    def cfg_scale(self, scale: float) -> float:
        """The true-CFG scale for a call at ``scale`` (FLUX's convention may turn it into an embedding only)."""
        return scale

    def generator_velocity(self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The student generator's call: conditional, never guided (FLUX: guidance embedding 1)."""
        return self.forward(net, x_t, self.network_time(t), cond, guidance_embed=self.guidance_embed(1.0))[0]

    def bind(self, net: nn.Module, cond: Conditioning, uncond: Conditioning | None = None) -> BoundNet:
        """``net`` bound to a batch's conditioning: the score-network protocol the SiD method calls."""
        return BoundNet(self, net, cond, uncond)

    # --- VAE ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1], ``(B, 3, H, W)``, fp32."""
        vae = self.pipe.vae
        cfg = vae.config
        z = latents.to(self.device, vae.dtype) / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        with self._encoders_on_device():
            return vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] -> latents (spec §6.4): a posterior sample for KL VAEs, scaled and shifted."""
        vae = self.pipe.vae
        cfg = vae.config
        with self._encoders_on_device():
            out = vae.encode(images.to(self.device, vae.dtype))
        dist = getattr(out, "latent_dist", None)
        z = dist.sample(generator) if dist is not None else out.latent
        return ((z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor).float()

    # --- the family's own multi-step sampler (teacher rows) ----------------------------------------------
    def make_scheduler(self):
        """A fresh copy of the snapshot's scheduler (schedulers keep state between steps)."""
        sched = self.pipe.scheduler
        return sched.__class__.from_config(copy.deepcopy(dict(sched.config)))

    @abstractmethod
    def _timesteps(self, scheduler, steps: int, noise: Tensor) -> Tensor:
        """Set ``scheduler`` up for ``steps`` steps exactly as the family's pipeline does; return its timesteps."""

    def _scheduler_time_to_net(self, timestep: Tensor) -> Tensor:
        # Scheduler timesteps live in [0, 1000] (sigma x 1000). Dividing (rather than multiplying by a ratio)
        # keeps the value bit-identical to what the pipelines hand their transformers.
        return timestep / (1000.0 / self.entry.time_scale)

    @torch.no_grad()
    def sample(self, net: nn.Module, cond: Conditioning, *, steps: int | None = None,
               guidance: float | None = None, noise: Tensor | None = None, uncond: Conditioning | None = None,
               generator: torch.Generator | None = None, resolution: int | None = None) -> Tensor:
        """The family's multi-step sampler (its scheduler, its shift, CFG at ``guidance``) from ``noise``
        (default: fresh normal latents). Returns final latents ``(B, C, H, W)`` in fp32."""
        steps = steps or self.entry.sample_steps
        guidance = self.entry.sample_guidance if guidance is None else guidance
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = self.initial_noise(len(cond), resolution, generator=generator) if noise is None else noise.float()
        scheduler = self.make_scheduler()
        for ts in self._timesteps(scheduler, steps, x):
            nt = self._scheduler_time_to_net(ts.expand(x.shape[0]).to(self.device))
            v = self.sampler_velocity(net, x.to(self.dtype), nt, cond, guidance, uncond)
            x = scheduler.step(v.float(), ts, x, return_dict=False)[0]
        return x

    def sampler_velocity(self, net: nn.Module, x: Tensor, net_time: Tensor, cond: Conditioning, guidance: float,
                         uncond: Conditioning | None) -> Tensor:
        """The velocity the family's pipeline uses at ``guidance`` (plain CFG; FLUX overrides)."""
        return self.velocity(net, x, None, cond, scale=guidance, uncond=uncond, net_time=net_time)[0]


class BoundNet:
    """A network bound to its batch's conditioning; implements the SiD method's ``ScoreNet`` protocol
    (``(x_t, t, *, scale, features) -> (v, logits | None)``) and the generator's plain ``velocity(x_t, t)``."""

    def __init__(self, adapter: TeacherAdapter, net: nn.Module, cond: Conditioning,
                 uncond: Conditioning | None = None):
        self.adapter, self.net, self.cond, self.uncond = adapter, net, cond, uncond

    def __call__(self, x_t: Tensor, t: Tensor, *, scale: float = 1.0, features: bool = False
                 ) -> tuple[Tensor, Tensor | None]:
        return self.adapter.velocity(self.net, x_t, t, self.cond, scale=scale, uncond=self.uncond,
                                     features=features)

    def velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.adapter.generator_velocity(self.net, x_t, t, self.cond)

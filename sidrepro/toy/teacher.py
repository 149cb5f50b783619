"""Train the toy teacher by flow matching on mixture samples, sample it with Euler, measure it against the
exact field, and bind it (or any toy network) to labels as the SiD method's ``ScoreNet``."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..flow import interpolate
from ..sid.guidance import cfg, guided_velocity
from ..sid.time_law import sample_time
from .mixture import GaussianMixture
from .nets import VelocityMLP


@dataclass(frozen=True)
class TeacherConfig:
    hidden: int = 128
    depth: int = 3
    # 12k iterations: a student inherits the teacher's field errors at small t, where the modes are sharp. At 4k
    # the error there was 6x larger and the 2-D students sat 1.4-2.4x from the data relative to their teacher.
    iters: int = 12_000
    batch: int = 512
    lr: float = 2e-3
    label_dropout: float = 0.1  # as text-to-image teachers are trained, so that CFG is possible
    ema: float = 0.999


def train_teacher(data: GaussianMixture, cfg_: TeacherConfig, seed: int, *, progress: bool = True
                  ) -> tuple[VelocityMLP, list[float]]:
    """Flow matching on samples: minimise ``|v(x_t, t, label) - (eps - x0)|^2`` with ``t ~ U(0, 1)``; returns the
    EMA network and the loss curve."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = VelocityMLP(data.dim, data.modes, cfg_.hidden, cfg_.depth)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg_.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg_.lr, total_steps=cfg_.iters, pct_start=0.05)
    losses = []
    for _ in tqdm(range(cfg_.iters), desc="teacher", disable=not progress, leave=False):
        x0, labels = data.sample(cfg_.batch, g)
        drop = torch.rand(cfg_.batch, generator=g) < cfg_.label_dropout
        labels = labels.masked_fill(drop, data.null_label)
        eps = torch.randn(x0.shape, generator=g)
        t = torch.rand(cfg_.batch, generator=g)
        loss = ((net(interpolate(x0, eps, t), t, labels) - (eps - x0)) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - cfg_.ema)
        losses.append(loss.item())
    return ema.eval(), losses


def guided(net: VelocityMLP, x_t: Tensor, t: Tensor, labels: Tensor, scale: float, *, features: bool = False
           ) -> tuple[Tensor, Tensor | None]:
    """CFG in velocity space with the null label; logits (features) from the conditional pass only."""
    null = torch.full_like(labels, net.num_labels)
    if bool((labels == net.num_labels).all()):
        scale = 1.0  # unconditional prompts: both halves would be equal
    if not features:
        return guided_velocity(net, x_t, t, labels, null, scale), None
    if scale == 1:
        return net(x_t, t, labels, features=True)
    v, h = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, labels]), features=True)
    v_u, v_c = v.chunk(2)
    return cfg(v_u, v_c, scale), h.chunk(2)[1]


class Bound:
    """A toy network bound to a batch of labels: the ``ScoreNet`` protocol of :mod:`sidrepro.sid.method`."""

    def __init__(self, net: VelocityMLP, labels: Tensor):
        self.net, self.labels = net, labels

    def __call__(self, x_t: Tensor, t: Tensor, *, scale: float = 1.0, features: bool = False
                 ) -> tuple[Tensor, Tensor | None]:
        return guided(self.net, x_t, t, self.labels, scale, features=features)

    def velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Unguided velocity: how the generator is called."""
        return self.net(x_t, t, self.labels)


@torch.no_grad()
def euler_sample(net: VelocityMLP, labels: Tensor, *, steps: int = 32, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """The teacher's own multi-step sampler: Euler on the probability-flow ODE from t = 1 to t = 0."""
    x = torch.randn(labels.shape[0], net.dim, generator=generator)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        v, _ = guided(net, x, t, labels, scale)
        x = x + (ts[i + 1] - ts[i]) * v
    return x


@torch.no_grad()
def field_error(net: VelocityMLP, data: GaussianMixture, *, n: int = 20000, seed: int = 0,
                conditional: bool = True) -> float:
    """Relative squared error of the network's velocity against the exact one,
    ``E|v_net - v*|^2 / E|v*|^2``, at ``t`` from the distillation time law and ``x_t`` from the true data."""
    g = torch.Generator().manual_seed(seed)
    x0, labels = data.sample(n, g)
    if not conditional:
        labels = torch.full_like(labels, data.null_label)
    t = sample_time(n, generator=g).clamp(1e-3, 1.0)
    x_t = interpolate(x0, torch.randn(x0.shape, generator=g), t)
    v_star = data.velocity(x_t, t, labels)
    v = net(x_t, t, labels)
    return float(((v - v_star) ** 2).sum() / (v_star**2).sum())

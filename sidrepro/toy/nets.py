"""The toy's networks: a small time- and label-conditioned MLP that predicts rectified-flow velocity.

It mirrors the DiT's layout where SiD cares: the conditioning is added to the hidden state and a final LayerNorm
(``norm_out``) precedes the output projection (``proj_out``). The discriminator reads the normalised features
before ``proj_out``, as in the DiT, through a small linear head (``disc_head``, ``disc_logits`` logits): a DiT
averages thousands of tokens into rich pooled features, while a toy MLP's single LayerNorm output has zero mean
across units, which leaves a headless "every unit is a logit" discriminator almost blind.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierTime(nn.Module):
    """``t in [0, 1]`` to sin/cos features at log-spaced frequencies, then an MLP."""

    def __init__(self, hidden: int, num_freqs: int = 32, max_freq: float = 1000.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(max_freq), num_freqs)))
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.mlp(self.norm(h) + emb)


class VelocityMLP(nn.Module):
    """``v(x_t, t, label)``; label ``num_labels`` is the null (empty-prompt) label."""

    def __init__(self, dim: int, num_labels: int, hidden: int = 128, depth: int = 3, disc_logits: int = 8):
        super().__init__()
        self.dim, self.num_labels = dim, num_labels
        self.time = FourierTime(hidden)
        self.label = nn.Embedding(num_labels + 1, hidden)
        self.proj_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, dim)
        self.disc_head = nn.Linear(hidden, disc_logits)

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor, *, features: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        emb = self.time(t) + self.label(labels)
        h = self.proj_in(x_t) + emb
        for block in self.blocks:
            h = block(h, emb)
        feats = self.norm_out(h)
        v = self.proj_out(feats)
        return (v, self.disc_head(feats)) if features else v

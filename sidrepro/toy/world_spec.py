"""What picks a Gaussian-mixture world (torch-free, so that the command line can read its defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldSpec:
    """What picks a world: dimension, number of modes and the seed (plus how spread out it is)."""

    dim: int = 2
    modes: int = 8
    seed: int = 0
    mean_scale: float = 1.5  # per-axis std of the mode means
    min_std: float = 0.05  # per-axis std range of each mode, along random axes
    max_std: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"world dim must be a positive integer, got {self.dim!r}")
        if isinstance(self.modes, bool) or not isinstance(self.modes, int) or self.modes < 1:
            raise ValueError(f"world modes must be a positive integer, got {self.modes!r}")
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")
        if not self.mean_scale > 0:
            raise ValueError(f"mean_scale must be > 0, got {self.mean_scale}")

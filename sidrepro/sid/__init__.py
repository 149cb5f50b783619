"""Score identity Distillation for flow-matching models, model-agnostic (torch only).

The public names below are the contract with the rest of sidrepro (design §3).
"""

from .adversarial import AdversarialSchedule, discriminator_loss, generator_adversarial_loss
from .guidance import cfg, concat_conditions, guided_velocity
from .losses import fake_score_loss, finite_sum, generator_loss
from .method import PhaseOutput, ScoreNet, SiD, SiDConfig
from .sampler import NOISE_TYPES, generate, step_times
from .time_law import TIME_MEAN, TIME_STD, sample_time
from .weighting import DEFAULT_WEIGHTING, WEIGHTINGS, check_weighting, loss_weight

__all__ = [
    "DEFAULT_WEIGHTING",
    "NOISE_TYPES",
    "TIME_MEAN",
    "TIME_STD",
    "WEIGHTINGS",
    "AdversarialSchedule",
    "PhaseOutput",
    "ScoreNet",
    "SiD",
    "SiDConfig",
    "cfg",
    "check_weighting",
    "concat_conditions",
    "discriminator_loss",
    "fake_score_loss",
    "finite_sum",
    "generate",
    "generator_adversarial_loss",
    "generator_loss",
    "guided_velocity",
    "loss_weight",
    "sample_time",
    "step_times",
]

"""sidrepro: reproduce "Score Distillation of Flow Matching Models" (SiD-DiT) from teachers to paper tables."""

__version__ = "0.1.0"

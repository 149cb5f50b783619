"""Distillation: SiD-DiT training of few-step students from flow-matching teachers (data, config, trainer)."""

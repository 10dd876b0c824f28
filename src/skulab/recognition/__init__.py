"""Recognizer: one module per ablation axis (backbones, losses, optimizers, schedules, augment)."""

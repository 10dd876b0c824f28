"""skulab: a reproducible ablation lab for retail product detection and recognition."""

__version__ = "0.1.0"

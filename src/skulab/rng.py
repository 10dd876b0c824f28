"""Global RNG states (Python, NumPy, torch) for checkpoints, so a resumed run draws what an
uninterrupted one would have drawn."""

import random

import numpy as np
import torch


def global_rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])

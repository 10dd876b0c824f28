"""Checkpoints and resume, for both models: what makes a checkpoint resumable, and the RNG states in it.

- `code_hash(folder, extra)` and `fingerprint(**parts)`: a checkpoint records the fingerprint of the
  code, config and data that wrote it, and a run resumes only from a checkpoint with its own
  fingerprint (a checkpoint of other code, config or data is never continued);
- `global_rng_state()` / `set_global_rng_state()` (Python, NumPy, torch) and `rng_state()` /
  `set_rng_state()`, which add a DataLoader's generator: a resumed run draws what an uninterrupted
  one would have drawn;
- `save(obj, path)` (atomic: a crash leaves the previous file) and `load(path)`.
"""

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skulab.io import atomic_path, params_hash


def code_hash(folder: Path, extra: dict[str, str] | None = None) -> str:
    """The hash of a package's code (every *.py in `folder`) and of `extra` texts (name -> text), e.g. a config file."""
    sources = sorted(Path(folder).glob("*.py"))
    return params_hash({**{path.name: path.read_text() for path in sources}, **(extra or {})})


def file_hash(path: Path) -> str:
    """A file's bytes, hashed (weights a config names by path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def fingerprint(**parts: Any) -> str:
    """What a checkpoint must have been written by to be resumed: config, seed, data and code hashes, ..."""
    return params_hash(parts)


def global_rng_state() -> dict:
    """The global RNG states (Python, NumPy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """The global RNG states and, if given, a DataLoader generator's ('loader')."""
    state = global_rng_state()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    set_global_rng_state(state)
    if loader_generator is not None:
        loader_generator.set_state(state["loader"])


def save(obj: Any, path: Path) -> None:
    """torch.save, atomically: the file is either the previous one or the whole new one."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> Any:
    """A checkpoint written by `save` (or mmengine), on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)

"""Two fixes for mmengine 0.10 on current torch and setuptools, applied before mmengine loads anything.

- torch >= 2.6 loads checkpoints with weights_only=True by default, and mmengine's loader does not
  say otherwise, so resuming from its own checkpoints (which pickle numpy arrays and message-hub
  state) fails. Our loader allows full unpickling only under the folders the stage trusts (its own
  work dir); every other file, such as a user's pretrained weights, still loads weights-only.
- mmengine finds `mmdet::` base configs through pkg_resources, which setuptools 82 removed and
  which warns on import before that; importlib does the same job.
"""

import importlib.util
import os
from pathlib import Path

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_trusted: set[Path] = set()


def trust_checkpoints_under(folder: Path) -> None:
    _trusted.add(Path(folder).resolve())


def _load_local(filename: str, map_location=None):
    path = Path(filename).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{filename} can not be found.")
    trusted = any(path.is_relative_to(folder) for folder in _trusted)
    return torch.load(path, map_location=map_location, weights_only=not trusted)


def _is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _installed_path(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"package '{package}' is not installed")
    return os.path.dirname(spec.origin)


def patch_mmengine() -> None:
    import mmengine.config.config as config_module

    CheckpointLoader.register_scheme(prefixes="", loader=_load_local, force=True)
    config_module.is_installed = _is_installed
    config_module.get_installed_path = _installed_path

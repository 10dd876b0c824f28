"""Check a local backbone checkpoint (`detector.base.pretrained: path`) before training starts.

mmengine's `Pretrained` init loads with strict=False and only logs what it skipped or could not fit,
so a ResNet-50 file for a ResNet-18 backbone, or an mmdet detector checkpoint (keys under
`backbone.`), would train a backbone that is partly random, silently. The file must hold the
backbone's keys with the backbone's shapes; torchvision's classifier (`fc.*`) is the one allowed
extra. The file is read weights-only and nothing is downloaded.
"""

import re
from pathlib import Path

import torch

from skulab.errors import SkulabError

IGNORED = re.compile(r"^fc\.")  # torchvision ResNet's ImageNet classifier: no detector reads it
SHOWN = 3  # keys named per kind of problem


def _state_dict(path: Path) -> dict:
    """The tensors as mmengine's loader sees them: inside 'state_dict' if present, without a 'module.' prefix."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickling more than tensors: torch raises many kinds
        raise SkulabError(
            f"{path}: cannot read the pretrained backbone checkpoint as tensors only ({type(exc).__name__}); "
            "expected a file written by torch.save(model.state_dict(), path)"
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkulabError(f"{path}: expected a state dict of tensors (torchvision ResNet layout), got {type(checkpoint).__name__}")
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def check_backbone_weights(path: Path, backbone: dict) -> None:
    """Raise a one-line SkulabError unless `path` fits the backbone `backbone` (an mmdet config dict) exactly."""
    from mmdet.registry import MODELS

    state = _state_dict(path)
    expected = {key: tuple(value.shape) for key, value in MODELS.build({**backbone, "init_cfg": None}).state_dict().items()}
    missing = sorted(key for key in expected if key not in state)
    unexpected = sorted(key for key in state if key not in expected and not IGNORED.match(key))
    mismatched = sorted(
        f"{key} {tuple(state[key].shape)} vs {expected[key]}" for key in expected if key in state and tuple(state[key].shape) != expected[key]
    )
    problems = [
        f"{label} ({len(keys)}): {_listed(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        name = f"{backbone.get('type')}-{backbone.get('depth')}"
        raise SkulabError(
            f"{path}: does not fit the {name} backbone ({'; '.join(problems)}); "
            f"expected a torchvision-layout resnet{backbone.get('depth')} state dict"
        )

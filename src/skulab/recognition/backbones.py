"""Backbones by name, built with timm; adding one is one record in skulab/axes.py (its timm model name).

Pretrained weights come from `pretrained`: `none` (random init, the default), `imagenet` (timm's
download; needs network) or a local file, for machines without network: a state dict saved with
torch.save (or a timm/torchvision checkpoint holding one, or timm's `model.safetensors`), read by
timm's own `load_state_dict`, in timm's key layout (`timm.create_model(...).state_dict()`) or in
torchvision's where timm can read it: torchvision's ResNets share timm's layout (timm loads its
`resnet*.tv_in1k` weights unchanged), and a model whose timm module has a `checkpoint_filter_fn`
is converted by it. torchvision's MobileNetV3 and EfficientNet layouts have no timm converter and
are refused by name. Nothing is downloaded for a local file.
"""

import sys
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from torch import nn

from skulab import axes
from skulab.errors import SkulabError

# skulab name -> timm model name, from the records
BACKBONES = {name: entry.timm_name for name, entry in axes.BACKBONES.items()}

SHOWN_KEYS = 3  # keys named per kind of mismatch in an error


def create_backbone(name: str, pretrained: str = "none") -> nn.Module:
    """A feature extractor (no classifier) with `num_features` set; `pretrained` as the module docstring."""
    timm_name = BACKBONES[name]
    if pretrained == "imagenet":
        return timm.create_model(timm_name, pretrained=True, num_classes=0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    if pretrained != "none":
        load_local_weights(model, timm_name, Path(pretrained))
    return model


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SkulabError(f"recognizer pretrained weights not found: {path}")
    try:  # timm's reader: .safetensors or torch.save, a bare state dict or under state_dict/model, DDP prefixes cleaned
        state = load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a file that is not weights
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SkulabError(f"{path}: not a readable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkulabError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return state


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (", ..." if len(keys) > SHOWN_KEYS else "")


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_local_weights(model: nn.Module, timm_name: str, path: Path) -> None:
    """Load a local timm- or torchvision-layout file into `model` (headless), or fail with one line.

    The file's classifier head is dropped (the recognizer replaces it); every other key must match
    the backbone exactly, so a file of another architecture (resnet50 for resnet18) is refused
    rather than half-loaded.
    """
    state = _read(path)
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:  # timm's own converter for this family (official layouts to timm's)
        state = convert(state, model)
    head = model.pretrained_cfg.get("classifier") or ""
    state = {k: v for k, v in state.items() if not (head and k.startswith(f"{head}."))}
    expected = model.state_dict()
    # BatchNorm fills in a missing num_batches_tracked itself (old checkpoints lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state)
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
    if reshaped:
        shown = [f"{k}: file {_shape(state[k])}, model {_shape(expected[k])}" for k in reshaped[:SHOWN_KEYS]]
        problems.append(f"{len(reshaped)} keys of another shape ({'; '.join(shown)}{'; ...' if len(reshaped) > SHOWN_KEYS else ''})")
    hint = ""
    if any(k.startswith("features.") for k in unexpected) and not any(k.startswith("features.") for k in expected):
        hint = (
            f"; this is torchvision's layout (features.*), which timm cannot convert to {timm_name}: "
            f"use timm's weights for it (timm.create_model('{timm_name}').state_dict(), or its hub file model.safetensors)"
        )
    article = "an" if timm_name[0] in "aeiou" else "a"
    raise SkulabError(f"{path}: not {article} {timm_name} checkpoint: {', '.join(problems)}{hint}")

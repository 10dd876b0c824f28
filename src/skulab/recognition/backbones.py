"""Backbones by name, built with timm; adding one is one line in BACKBONES."""

from pathlib import Path

import timm
import torch
from torch import nn

from skulab.errors import SkulabError

# skulab name -> timm model name
BACKBONES = {
    "mobilenetv3_small": "mobilenetv3_small_100",
    "mobilenetv3_large": "mobilenetv3_large_100",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
}


def create_backbone(name: str, pretrained: str = "none") -> nn.Module:
    """A feature extractor (no classifier) with `num_features` set.

    `pretrained` is `none`, `imagenet` (timm's real download; needs network access) or a path to a
    local timm/torchvision state dict of the same architecture.
    """
    timm_name = BACKBONES[name]
    if pretrained == "none":
        return timm.create_model(timm_name, pretrained=False, num_classes=0)
    if pretrained == "imagenet":
        return timm.create_model(timm_name, pretrained=True, num_classes=0)
    path = Path(pretrained)
    if not path.is_file():
        raise SkulabError(f"recognizer pretrained weights not found: {path}")
    model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    try:  # extra keys (a classifier head) are fine; missing or mis-shaped ones are not
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip()
        raise SkulabError(f"{path}: not a {timm_name} checkpoint ({detail})") from None
    if missing:
        raise SkulabError(
            f"{path}: not a {timm_name} checkpoint ({len(missing)} missing keys, e.g. {missing[0]})"
        )
    return model

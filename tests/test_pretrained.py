"""Local pretrained weights (`pretrained: path/to/file`), for machines with no network.

Detector part: `detector.base.pretrained` points at a torchvision-layout ResNet state dict that a user
downloaded elsewhere. It must load exactly into the backbone, offline; a file that does not fit must stop
the cell with one line naming the keys, since mmengine's own loader would train a partly random backbone.
"""

import socket

import pytest
import torch
import torchvision

from conftest import REPO
from skulab.detection.config import build_config
from skulab.data.coco import detector_annotations
from skulab.errors import SkulabError
from test_detection import detector_config

# --- detector backbone ------------------------------------------------------------------------------


def resnet_state(depth: int, seed: int = 0) -> dict:
    """torchvision's resnet<depth> keys and shapes with random values (nothing downloaded)."""
    generator = torch.Generator().manual_seed(seed)
    state = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    return {key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value for key, value in state.items()}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _build(tiny_prepared, tmp_path, weights):
    config = detector_config(pretrained=str(weights))
    annotations, classes = detector_annotations(tiny_prepared, tmp_path / "ann", class_aware=False)
    return build_config(config, REPO, tiny_prepared, annotations, classes, tmp_path / "w", tmp_path / "d")


def test_detector_backbone_loads_a_local_torchvision_resnet_exactly(tiny_prepared, tmp_path, no_network):
    from mmdet.registry import MODELS

    state = resnet_state(18)
    weights = tmp_path / "resnet18.pth"
    torch.save(state, weights)
    cfg = _build(tiny_prepared, tmp_path, weights)
    assert cfg.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": str(weights.resolve())}
    model = MODELS.build(cfg.model)
    before = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    model.init_weights()  # what mmengine's Runner does before training
    loaded = model.backbone.state_dict()
    assert set(state) - set(loaded) == {"fc.weight", "fc.bias"}  # torchvision's classifier: no detector reads it
    assert all(torch.equal(loaded[key], state[key]) for key in loaded)
    assert not torch.equal(before["layer4.1.conv2.weight"], loaded["layer4.1.conv2.weight"])  # it did change


def _detector_checkpoint(weights):
    torch.save({"state_dict": {f"backbone.{key}": value for key, value in resnet_state(18).items()}, "meta": {}}, weights)


def _missing_one(weights):
    state = resnet_state(18)
    del state["layer4.1.bn2.running_var"]
    torch.save(state, weights)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda weights: torch.save(resnet_state(50), weights), r"does not fit the ResNet-18 backbone \(unexpected keys \(\d+\): layer1\.0\.bn3\.bias, .*; shape mismatch \(\d+\): layer1\.0\.conv1\.weight \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)"),
        (_missing_one, r"missing keys \(1\): layer4\.1\.bn2\.running_var\)"),
        (_detector_checkpoint, r"missing keys \(\d+\): bn1\.bias, .*; unexpected keys \(\d+\): backbone\.bn1\.bias"),
        (lambda weights: weights.write_text("not a checkpoint"), r"cannot read the pretrained backbone checkpoint as tensors only \(UnpicklingError\)"),
        (lambda weights: torch.save([1, 2, 3], weights), r"expected a state dict of tensors"),
    ],
    ids=["resnet50-for-18", "missing-key", "detector-checkpoint", "not-torch", "not-a-state-dict"],
)
def test_detector_backbone_refuses_weights_that_do_not_fit(tiny_prepared, tmp_path, no_network, write, message):
    weights = tmp_path / "weights.pth"
    write(weights)
    with pytest.raises(SkulabError, match=message) as error:
        _build(tiny_prepared, tmp_path, weights)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{weights.resolve()}: ")

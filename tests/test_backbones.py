"""Local pretrained weights (`recognizer.base.pretrained: path/to/state_dict.pt`) in timm's and torchvision's layouts.

Every file holds random values, so a key that was not loaded (left at its init) cannot pass.
"""

import socket

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from skulab.errors import SkulabError
from skulab.recognition.backbones import BACKBONES, create_backbone


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A local file must never reach the network (the user of a local file has none)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading local weights")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _randomized(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=generator)
        else:  # num_batches_tracked
            out[key] = torch.randint(1, 1000, value.shape, generator=generator, dtype=value.dtype)
    return out


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    loaded = model.state_dict()
    backbone_keys = [k for k in state if not k.startswith(f"{head}.")]
    assert set(loaded) == set(backbone_keys)
    for key in backbone_keys:
        assert torch.equal(loaded[key], state[key]), key


def _one_line_error(name: str, path, match: str) -> str:
    with pytest.raises(SkulabError, match=match) as info:
        create_backbone(name, str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("name", BACKBONES)
def test_timm_layout_loads_every_backbone_weight(tmp_path, name):
    """A file saved from timm.create_model(...) with its ImageNet classifier: the head is dropped, the rest loaded."""
    state = _randomized(timm.create_model(BACKBONES[name], num_classes=1000).state_dict())
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    model = create_backbone(name, str(path))
    _assert_loaded(model, state, model.pretrained_cfg["classifier"])


@pytest.mark.parametrize("name,torchvision_name", [("resnet18", "resnet18"), ("resnet50", "resnet50")])
def test_torchvision_resnet_layout_loads(tmp_path, name, torchvision_name):
    """torchvision's ResNet keys are timm's (timm loads resnet*.tv_in1k unconverted); fc is the head."""
    state = _randomized(getattr(torchvision.models, torchvision_name)().state_dict())
    path = tmp_path / f"{torchvision_name}.pth"
    torch.save(state, path)
    _assert_loaded(create_backbone(name, str(path)), state, "fc")


def test_torchvision_mobilenet_layout_is_refused_by_name(tmp_path):
    """timm has no converter from torchvision's MobileNetV3 layout (features.N...); say so, in one line."""
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    message = _one_line_error("mobilenetv3_small", path, "not a mobilenetv3_small_100 checkpoint")
    assert "unexpected keys (features.0.0.weight" in message and "missing keys (conv_stem.weight" in message
    assert "torchvision's layout" in message


def test_timm_hub_safetensors_and_wrapped_checkpoints_load(tmp_path):
    """timm's hub file (model.safetensors) and a training checkpoint ({'state_dict': ...}, DDP 'module.' prefix)."""
    state = _randomized(timm.create_model("mobilenetv3_small_100").state_dict(), seed=1)
    hub = tmp_path / "model.safetensors"
    save_file(state, hub)
    _assert_loaded(create_backbone("mobilenetv3_small", str(hub)), state, "classifier")
    wrapped = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    _assert_loaded(create_backbone("mobilenetv3_small", str(wrapped)), state, "classifier")


def test_missing_keys_are_named(tmp_path):
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    message = _one_line_error("resnet18", path, "not a resnet18 checkpoint")
    assert "1 missing keys (layer2.0.conv1.weight)" in message and "unexpected" not in message


def test_wrong_shapes_are_named(tmp_path):
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    path = tmp_path / "narrow.pt"
    torch.save(state, path)
    message = _one_line_error("resnet18", path, "not a resnet18 checkpoint")
    assert "1 keys of another shape (conv1.weight: file 32x3x7x7, model 64x3x7x7)" in message


def test_a_resnet50_file_is_not_resnet18_weights(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    message = _one_line_error("resnet18", path, "not a resnet18 checkpoint")
    assert "unexpected keys (layer1.0.conv3.weight" in message
    assert "keys of another shape (layer1.0.conv1.weight: file 64x64x1x1, model 64x64x3x3" in message


def test_unreadable_and_absent_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    _one_line_error("resnet18", text, "not a readable state dict")
    _one_line_error("resnet18", tmp_path / "absent.pt", "recognizer pretrained weights not found")


def test_none_is_random_init_without_network():
    a, b = create_backbone("resnet18"), create_backbone("resnet18")
    assert not torch.equal(a.conv1.weight, b.conv1.weight)

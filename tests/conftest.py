"""Shared fixtures: the repo's own params.yaml shrunk to test size, and a tiny prepared dataset."""

import copy
from pathlib import Path

import pytest
import yaml

from skulab.crop import crop_dataset
from skulab.data.prepare import prepare
from skulab.params import Params, RecognizerConfig, load_params

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "prepare": {
        "synthetic": {
            "num_classes": 6,
            "scenes": {"train": 8, "val": 3, "test": 3},
            "width": 192,
            "height": 160,
            "shelf_rows": 2,
        }
    },
    "recognizer": {
        "base": {"image_size": 32, "epochs": 3, "batch_size": 16, "milestones": [2], "embedding_dim": 32},
        "variants": {"baseline": {}, "triplet": {"loss": {"triplet": 1.0}}},
        "seeds": [0, 1],
    },
}


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "variants":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_params_dict() -> dict:
    return deep_merge(repo_params(), TINY)


@pytest.fixture(scope="session")
def tiny_params(tmp_path_factory) -> Params:
    path = write_params(tmp_path_factory.mktemp("params") / "params.yaml", deep_merge(repo_params(), TINY))
    return load_params(path)


@pytest.fixture(scope="session")
def tiny_crops(tmp_path_factory, tiny_params) -> Path:
    """A tiny synthetic dataset, prepared and cropped: data/crops layout."""
    root = tmp_path_factory.mktemp("data")
    card, _ = prepare(tiny_params.prepare, root / "prepared")
    crop_dataset(root / "prepared", root / "crops", tiny_params.crop, card["hash"])
    return root / "crops"


def config(tiny_params: Params, **overrides) -> RecognizerConfig:
    return RecognizerConfig.model_validate({**tiny_params.recognizer.base, **overrides})

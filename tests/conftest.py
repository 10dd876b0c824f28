"""Shared fixtures: the repo's own params.yaml shrunk to test size, and a tiny prepared dataset."""

import copy
import os
from pathlib import Path

# pytest-xdist runs a test process per core, and many tests start training processes of their own:
# cores are shared, and OpenMP's default spinning wait makes each process several times slower
# (metrics/bench/omp_wait.md). Set before anything loads torch (and libgomp); inherited by subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import yaml

from skulab.crop import crop_dataset
from skulab.data.coco import load_card
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
    "detector": {
        "base": {
            "input_size": [192, 160],
            "fpn_channels": 16,
            "rpn_nms_pre": 200,
            "rpn_max_per_img": 50,
            "rcnn_sampler_num": 32,
            "fc_out_channels": 32,
            "warmup_iters": 2,
            "epochs": 2,
            "milestones": [1],
        },
        "variants": {
            "faster_rcnn": {"config": "configs/detectors/faster_rcnn.py"},
            "retinanet": {"config": "configs/detectors/retinanet.py", "lr": 0.01},
        },
    },
    "crop": {"score_threshold": 0.05, "stored_size": 37, "workers": 1},  # 37 = round(image_size 32 x 1.15)
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
    """params.yaml at `path`, next to a link to the repo's configs/ (params name detector configs by path)."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    configs = path.parent / "configs"
    if not configs.exists():
        configs.symlink_to(REPO / "configs")
    return path


@pytest.fixture
def tiny_params_dict() -> dict:
    return deep_merge(repo_params(), TINY)


@pytest.fixture(scope="session")
def tiny_params(tmp_path_factory) -> Params:
    path = write_params(tmp_path_factory.mktemp("params") / "params.yaml", deep_merge(repo_params(), TINY))
    return load_params(path)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tiny_params) -> Path:
    """A tiny synthetic dataset, prepared: data/prepared layout."""
    root = tmp_path_factory.mktemp("data") / "prepared"
    prepare(tiny_params.prepare, root)
    return root


@pytest.fixture(scope="session")
def tiny_crops(tiny_params, tiny_prepared) -> Path:
    """The tiny dataset cropped from ground-truth boxes: data/crops layout, next to data/prepared."""
    root = tiny_prepared.parent / "crops"
    crop_dataset(tiny_prepared, root, tiny_params.crop, load_card(tiny_prepared)["hash"])
    return root


def config(tiny_params: Params, **overrides) -> RecognizerConfig:
    return RecognizerConfig.model_validate({**tiny_params.recognizer.base, **overrides})

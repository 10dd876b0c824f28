"""Dense shelves: detector.base.max_per_img caps test-time output, and nothing caps it lower.

A shelf photo can hold 150+ products; mmdet's shipped configs keep 100 detections per image and the
two-stage configs here propose fewer boxes than that at test time, so the cap is checked on the
resolved config of every detector and on a real (untrained) model's output for a generated dense scene.
"""

import warnings

import numpy as np
import pytest
import torch

from conftest import REPO
from skulab.data.synthetic import SceneConfig, make_skus, render_scene, render_sku
from skulab.detection.config import build_config
from skulab.data.coco import detector_annotations
from test_detection import detector_config

CONFIGS = ["faster_rcnn", "cascade_rcnn", "retinanet", "fcos", "atss"]


@pytest.fixture(scope="module")
def dense_scene(tmp_path_factory):
    """One generated 640x512 shelf with 8 rows: 155 products, the smallest 13 px wide."""
    skus = make_skus(6, 2, seed=0)
    sprites = {sku.id: render_sku(sku) for sku in skus}
    image, boxes = render_scene(skus, sprites, SceneConfig(640, 512, 8, 0.0, 0.0, 0.0), np.random.default_rng([0, 9, 0]))
    path = tmp_path_factory.mktemp("dense") / "dense.jpg"
    image.save(path)
    return path, boxes


@pytest.fixture(scope="module")
def annotations(tiny_prepared, tmp_path_factory):
    return detector_annotations(tiny_prepared, tmp_path_factory.mktemp("ann"), class_aware=False)


def _cfg(name, annotations, tiny_prepared, tmp_path, **overrides):
    config = detector_config(config=f"configs/detectors/{name}.py", **overrides)
    paths, classes = annotations
    return config, build_config(config, REPO, tiny_prepared, paths, classes, tmp_path / "work", tmp_path / "det" / "test")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_detector_keeps_max_per_img_at_test_time_only(name, annotations, tiny_prepared, tmp_path):
    config, cfg = _cfg(name, annotations, tiny_prepared, tmp_path, max_per_img=250)
    test_cfg = cfg.model.test_cfg
    if "rcnn" in test_cfg:
        train_cfg = cfg.model.train_cfg
        assert test_cfg.rcnn.max_per_img == 250
        # The R-CNN keeps at most what the RPN proposes: 250 proposals at test time (tiny params ask 50),
        # while training samples from exactly rpn_max_per_img proposals, as before.
        assert config.rpn_max_per_img == 50 and test_cfg.rpn.max_per_img == 250
        assert train_cfg.rpn_proposal.max_per_img == 50 and train_cfg.rpn_proposal.nms_pre == config.rpn_nms_pre
    else:
        assert test_cfg.max_per_img == 250 and test_cfg.nms_pre >= 250  # nms_pre is per FPN level
    if "tta_model" in cfg:
        assert cfg.tta_model.tta_cfg.max_per_img == 250
    # A larger rpn_max_per_img is kept as it is.
    _, cfg = _cfg(name, annotations, tiny_prepared, tmp_path, max_per_img=20, rpn_max_per_img=400)
    if "rpn" in cfg.model.test_cfg:
        assert cfg.model.test_cfg.rpn.max_per_img == 400 and cfg.model.test_cfg.rcnn.max_per_img == 20


@pytest.mark.parametrize("name", ["faster_rcnn", "retinanet"])
def test_a_dense_shelf_gets_more_than_100_boxes(name, dense_scene, annotations, tiny_prepared, tmp_path):
    """An untrained model with no score threshold fills the cap: above mmdet's 100, at most max_per_img."""
    from mmdet.apis import inference_detector, init_detector

    path, products = dense_scene
    assert len(products) >= 150
    _, cfg = _cfg(name, annotations, tiny_prepared, tmp_path, max_per_img=300, input_size=[640, 512])
    test_cfg = cfg.model.test_cfg.rcnn if "rcnn" in cfg.model.test_cfg else cfg.model.test_cfg
    test_cfg.score_thr = 0.0  # untrained heads score near their prior (RetinaNet: 0.01)
    torch.manual_seed(0)  # the random initial weights decide how many boxes NMS keeps (faster_rcnn: 272)
    with warnings.catch_warnings(record=True):  # "checkpoint is None": an untrained model is enough here
        model = init_detector(cfg, device="cpu")
    boxes = inference_detector(model, str(path)).pred_instances.bboxes
    # faster_rcnn: beyond the 50 training proposals of the tiny params, so test-time proposals were raised.
    assert len(products) < len(boxes) <= 300
    if name == "retinanet":  # thousands of anchors survive: the cap is what stops them
        assert len(boxes) == 300

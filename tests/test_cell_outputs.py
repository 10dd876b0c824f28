"""What a recognizer cell leaves for the report: per-crop predictions, balanced and ground-truth-crop
accuracy, and a resume fingerprint that sees the crops' pixels."""

import csv
import json
import shutil

import mlflow
import pytest

from conftest import config
from skulab.crop import crop_dataset
from skulab.data.coco import load_card, load_split
from skulab.recognition.train import CellTrainer


@pytest.fixture(autouse=True)
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _fit(cfg, crops, out, stop_after=None, resume=False):
    trainer = CellTrainer(cfg, 0, crops, out / "model", out / "metrics")
    checkpoint = trainer.resumable() if resume else None
    with mlflow.start_run() as run:
        return trainer.fit(run.info.run_id, checkpoint, stop_after), trainer


def test_resume_fingerprint_covers_the_crop_pixels(tiny_params, tiny_prepared, tiny_crops, tmp_path):
    """crop.padding changes every crop but no manifest row: the interrupted cell must start over."""
    crops = tmp_path / "crops"
    shutil.copytree(tiny_crops, crops)
    cfg = config(tiny_params)
    _fit(cfg, crops, tmp_path, stop_after=1)
    assert CellTrainer(cfg, 0, crops, tmp_path / "model", tmp_path / "metrics").resumable()["epoch"] == 1
    manifest = (crops / "manifest.csv").read_text()
    wider = tiny_params.crop.model_copy(update={"padding": 0.3})
    crop_dataset(tiny_prepared, crops, wider, load_card(tiny_prepared)["hash"])
    assert (crops / "manifest.csv").read_text() == manifest  # same boxes, other pixels
    assert CellTrainer(cfg, 0, crops, tmp_path / "model", tmp_path / "metrics").resumable() is None


def test_predictions_file_matches_the_reported_metrics(tiny_params, tiny_crops, tmp_path):
    final, _ = _fit(config(tiny_params), tiny_crops, tmp_path)
    with open(tmp_path / "metrics" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tiny_crops / "manifest.csv", newline="") as f:
        test_crops = [r["crop"] for r in csv.DictReader(f) if r["split"] == "test"]
    assert [r["crop"] for r in rows] == test_crops
    correct = [int(r["pred"]) == int(r["label"]) for r in rows]
    assert sum(correct) / len(rows) == pytest.approx(final["test_top1"])
    assert all(0 <= float(r["confidence"]) <= 1 and -1 <= float(r["proto_similarity"]) <= 1 for r in rows)
    assert sum(int(r["proto_pred"]) == int(r["label"]) for r in rows) / len(rows) == pytest.approx(final["test_proto_acc"])
    assert 0 <= final["test_balanced_acc"] <= 1 and "test_gt_top1" not in final  # test crops are ground truth here


def test_detected_test_crops_are_also_scored_on_ground_truth_boxes(tiny_params, tiny_prepared, tmp_path):
    """Detections that are the true boxes: the detected and ground-truth crops score alike."""
    test = load_split(tiny_prepared, "test")
    detections = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1} for a in test["annotations"]]
    path = tmp_path / "test.bbox.json"
    path.write_text(json.dumps(detections))
    crops = tmp_path / "crops"
    crop_dataset(tiny_prepared, crops, tiny_params.crop, load_card(tiny_prepared)["hash"], "frcnn", path)
    final, _ = _fit(config(tiny_params), crops, tmp_path)
    assert final["test_gt_top1"] == pytest.approx(final["test_top1"])
    assert final["test_gt_proto_acc"] == pytest.approx(final["test_proto_acc"])

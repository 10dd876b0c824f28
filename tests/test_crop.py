"""The crop stage with a detector: test crops from its boxes, labelled by IoU matching, misses counted."""

import csv
import json

import pytest
import torch

from skulab.crop import choose_detector, crop_dataset
from skulab.data.coco import load_card, load_split
from skulab.errors import SkulabError
from skulab.recognition.data import load_split as load_crops
from skulab.recognition.evaluation import end_to_end


@pytest.fixture(scope="module")
def detected(tiny_prepared, tiny_params, tmp_path_factory):
    """Hand-made detections: every ground-truth box but one image's first box, one duplicate, one false alarm, one low score."""
    root = tmp_path_factory.mktemp("crop")
    test = load_split(tiny_prepared, "test")
    anns = sorted(test["annotations"], key=lambda a: a["id"])
    missed = anns[0]
    detections = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1} for a in anns[1:]]
    x, y, w, h = anns[1]["bbox"]
    detections.append({"image_id": anns[1]["image_id"], "bbox": [x + 1, y, w, h], "score": 0.8, "category_id": 1})  # duplicate
    image = next(i for i in test["images"] if i["id"] == anns[1]["image_id"])
    detections.append({"image_id": image["id"], "bbox": [0, 0, 12, 12], "score": 0.7, "category_id": 1})  # nothing there
    detections.append({"image_id": image["id"], "bbox": [0, 0, 30, 30], "score": 0.01, "category_id": 1})  # below threshold
    path = root / "test.bbox.json"
    path.write_text(json.dumps(detections))
    params = tiny_params.crop.model_copy(update={"score_threshold": 0.3, "min_box_size": 1})
    stats = crop_dataset(tiny_prepared, root / "crops", params, load_card(tiny_prepared)["hash"], "frcnn", path)
    with open(root / "crops" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"anns": anns, "missed": missed, "stats": stats, "rows": rows, "crops": root / "crops", "names": {c["id"]: c["name"] for c in test["categories"]}}


def test_test_crops_come_from_the_detector_with_matched_classes(detected):
    test_rows = [r for r in detected["rows"] if r["split"] == "test"]
    assert {r["origin"] for r in test_rows} == {"detection"} and {r["detector"] for r in test_rows} == {"frcnn"}
    matched = [r for r in test_rows if r["class_name"] != "background"]
    assert len(matched) == len(detected["anns"]) - 1
    for row in matched:
        assert float(row["iou"]) == pytest.approx(1.0) and float(row["score"]) == pytest.approx(0.9)
    background = [r for r in test_rows if r["class_name"] == "background"]
    assert sorted(float(r["score"]) for r in background) == [0.7, 0.8]  # the false alarm and the duplicate
    assert {r["class_id"] for r in background} == {"-1"}


def test_train_and_val_crops_stay_ground_truth(detected):
    assert {r["origin"] for r in detected["rows"] if r["split"] != "test"} == {"ground_truth"}


def test_stats_count_matches_background_and_misses(detected):
    test = detected["stats"]["test"]
    total = len(detected["anns"])
    assert test == {"gt_boxes": total, "matched": total - 1, "background": 2, "missed_gt": 1, "skipped_too_small": 0, "crops": total + 1}
    assert detected["stats"]["test_detector"] == "frcnn"


def test_recognizer_reads_background_crops_and_scores_end_to_end(detected):
    test = load_crops(detected["crops"], "test", 16)
    assert int((test.labels == -1).sum()) == 2 and len(test.products().labels) == len(detected["anns"]) - 1
    products = test.products()
    perfect = end_to_end(products.labels, products.labels, len(test.labels), detected["stats"]["test"]["gt_boxes"])
    total = len(detected["anns"])
    assert perfect == {"e2e_recall": pytest.approx((total - 1) / total), "e2e_precision": pytest.approx((total - 1) / (total + 1))}
    wrong = end_to_end(torch.full_like(products.labels, -5), products.labels, len(test.labels), total)
    assert wrong == {"e2e_recall": 0.0, "e2e_precision": 0.0}


def test_choose_detector_by_val_map(tmp_path):
    for name, value in (("a", 0.4), ("b", 0.6), ("c", 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.json").write_text(json.dumps({"val_bbox_mAP": value}))
    assert choose_detector("best", ["a", "b", "c"], tmp_path) == "b"  # ties: the first in params order
    assert choose_detector("a", ["a", "b", "c"], tmp_path) == "a"
    assert choose_detector("none", ["a"], tmp_path) is None
    with pytest.raises(SkulabError, match=r"d/final\.json: missing; run `dvc repro train_detector@d` first"):
        choose_detector("best", ["a", "d"], tmp_path)


def test_detections_for_unknown_images_are_rejected(tiny_prepared, tiny_params, tmp_path):
    path = tmp_path / "test.bbox.json"
    path.write_text(json.dumps([{"image_id": 987654, "bbox": [0, 0, 5, 5], "score": 0.9, "category_id": 1}]))
    with pytest.raises(SkulabError, match=r"test\.bbox\.json: image_id 987654 is not in the test split"):
        crop_dataset(tiny_prepared, tmp_path / "crops", tiny_params.crop, "h", "frcnn", path)
    assert not (tmp_path / "crops").exists()  # nothing half-written


def test_ground_truth_test_crops_are_cut_beside_the_detected_ones(detected):
    """The recognizer is also scored on true boxes, to show what detection costs it."""
    gt_rows = [r for r in detected["rows"] if r["split"] == "test_gt"]
    assert len(gt_rows) == len(detected["anns"]) == detected["stats"]["test_gt"]["crops"]
    assert {r["origin"] for r in gt_rows} == {"ground_truth"}
    assert sorted(r["class_name"] for r in gt_rows) == sorted(detected["names"][a["category_id"]] for a in detected["anns"])

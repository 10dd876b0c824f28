"""End-to-end shelf metrics on hand-made boxes: two shelf images, two SKUs with non-contiguous ids.

Image 10 (a.png) holds two SKU 3 and one SKU 7; image 11 (b.png) one of each. Recognizer class
index 0 is SKU 3 and index 1 is SKU 7 (classes.json sorted by id).
"""

import csv
import json

import numpy as np
import pytest

from skulab.errors import SkulabError
from skulab.io import read_csv
from skulab.shelf import (
    PREDICTION_FIELDS,
    confusion,
    count_accuracy,
    load_class_ids,
    shelf_detections,
    shelf_map,
    shelf_metrics,
)

CLASS_IDS = [3, 7]
BOXES = [  # image file, x, y, w, h, SKU id
    ("a.png", 0, 0, 20, 40, 3),
    ("a.png", 30, 0, 20, 40, 3),
    ("a.png", 60, 0, 20, 40, 7),
    ("b.png", 0, 0, 20, 40, 3),
    ("b.png", 30, 0, 20, 40, 7),
]
SWAPPED = "test/2.png"  # the SKU 7 in image a


@pytest.fixture
def gt_coco():
    images = [{"id": 10, "file_name": "a.png", "width": 100, "height": 50}, {"id": 11, "file_name": "b.png", "width": 100, "height": 50}]
    image_ids = {"a.png": 10, "b.png": 11}
    annotations = [
        {"id": i + 1, "image_id": image_ids[f], "bbox": [x, y, w, h], "category_id": c, "area": w * h, "iscrowd": 0}
        for i, (f, x, y, w, h, c) in enumerate(BOXES)
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "cola"}, {"id": 7, "name": "cola_zero"}]}


def manifest_row(crop, image, x, y, w, h, class_id, score="0.9"):
    """A row as csv.DictReader gives it: every value a string."""
    return {"crop": crop, "split": "test", "source_image": image, "x": str(x), "y": str(y), "w": str(w), "h": str(h),
            "class_id": str(class_id), "class_name": "", "origin": "detection", "detector": "frcnn", "score": score, "iou": "1.0"}


def perfect_inputs():
    """One exact detection per product, each named right by the recognizer."""
    manifest, predictions = [], []
    for i, (image, x, y, w, h, class_id) in enumerate(BOXES):
        manifest.append(manifest_row(f"test/{i}.png", image, x, y, w, h, class_id))
        label = CLASS_IDS.index(class_id)
        predictions.append({"crop": f"test/{i}.png", "label": str(label), "pred": str(label), "confidence": "1.0"})
    train_row = manifest_row("train/0.png", "t.png", 0, 0, 5, 5, 3) | {"split": "train"}
    return manifest + [train_row], predictions


def edit(rows, crop, **changes):
    return [row | changes if row["crop"] == crop else row for row in rows]


def test_perfect_prediction_scores_one(gt_coco):
    metrics = shelf_metrics(gt_coco, *perfect_inputs(), CLASS_IDS)
    assert metrics == {"mAP": pytest.approx(1.0), "mAP50": pytest.approx(1.0), "count_accuracy": 1.0, "detections": 5}


def test_detections_carry_box_class_and_score_product(gt_coco):
    manifest, predictions = perfect_inputs()
    predictions = edit(predictions, SWAPPED, pred="0", confidence="0.5")
    detection = shelf_detections(gt_coco, manifest, predictions, CLASS_IDS)[2]
    assert detection == {"image_id": 10, "category_id": 3, "bbox": [60.0, 0.0, 20.0, 40.0], "score": pytest.approx(0.45), "detector_score": 0.9}


# The SKU 7 in image a named SKU 3. SKU 7: 2 boxes, 1 found, precision 1 up to recall 0.5, which is
# 51 of COCO's 101 recall points: AP 51/101. SKU 3: 3 hits and 1 false alarm; the false alarm ranked
# after the hits costs nothing (AP 1), ranked first it makes the precision 0, 1/2, 2/3, 3/4 at recall
# 0, 1/3, 2/3, 1, whose envelope is 0.75 everywhere (AP 0.75). Boxes are exact: same AP at every IoU.
@pytest.mark.parametrize(
    "swapped_scores, others_scores, sku3_ap",
    [
        (("1.0", "0.5"), ("0.6", "1.0"), 1.0),  # swapped: 1.0 x 0.5 = 0.5 < 0.6 x 1.0, ranked last
        (("0.9", "1.0"), ("1.0", "0.8"), 0.75),  # swapped: 0.9 x 1.0 = 0.9 > 1.0 x 0.8, ranked first
    ],
)
def test_one_swapped_label_lowers_map_and_count_accuracy(gt_coco, swapped_scores, others_scores, sku3_ap):
    manifest, predictions = perfect_inputs()
    manifest = [row | {"score": others_scores[0]} for row in manifest]
    predictions = [row | {"confidence": others_scores[1]} for row in predictions]
    manifest = edit(manifest, SWAPPED, score=swapped_scores[0])
    predictions = edit(predictions, SWAPPED, pred="0", confidence=swapped_scores[1])
    metrics = shelf_metrics(gt_coco, manifest, predictions, CLASS_IDS)
    expected = (sku3_ap + 51 / 101) / 2
    assert metrics["mAP"] == pytest.approx(expected) and metrics["mAP50"] == pytest.approx(expected)
    assert metrics["count_accuracy"] == 0.5  # image a now counts three SKU 3 and no SKU 7


def test_a_missed_product_and_a_false_alarm_lower_count_accuracy(gt_coco):
    manifest, predictions = perfect_inputs()
    missed = shelf_detections(gt_coco, [r for r in manifest if r["crop"] != "test/3.png"], [p for p in predictions if p["crop"] != "test/3.png"], CLASS_IDS)
    assert count_accuracy(gt_coco, missed) == 0.5  # image b misses its SKU 3
    alarm_row = manifest_row("test/9.png", "a.png", 85, 0, 10, 10, -1, score="0.4")
    alarm = shelf_detections(gt_coco, manifest + [alarm_row], predictions + [{"crop": "test/9.png", "label": "-1", "pred": "1", "confidence": "0.9"}], CLASS_IDS)
    assert count_accuracy(gt_coco, alarm) == 0.5  # image a counts two SKU 7
    assert count_accuracy(gt_coco, alarm, min_detector_score=0.5) == 1.0  # the false alarm's detector score is 0.4
    assert count_accuracy(gt_coco, [d for d in missed if d["image_id"] == 11] + [d for d in alarm if d["image_id"] == 10]) == 0.0
    assert shelf_map(gt_coco, missed)["mAP"] < 1.0 and shelf_map(gt_coco, [])["mAP"] == 0.0


def test_predictions_must_match_the_test_crops(gt_coco):
    manifest, predictions = perfect_inputs()
    with pytest.raises(SkulabError, match="1 crops without a prediction"):
        shelf_detections(gt_coco, manifest, predictions[1:], CLASS_IDS)
    with pytest.raises(SkulabError, match="outside the 2 classes"):
        shelf_detections(gt_coco, manifest, edit(predictions, SWAPPED, pred="2"), CLASS_IDS)
    with pytest.raises(SkulabError, match="not in the test annotations"):
        shelf_detections(gt_coco, edit(manifest, SWAPPED, source_image="z.png"), predictions, CLASS_IDS)


def test_ground_truth_crops_have_detector_score_one(gt_coco):
    manifest, predictions = perfect_inputs()
    detections = shelf_detections(gt_coco, [row | {"score": ""} for row in manifest], predictions, CLASS_IDS)
    assert {d["detector_score"] for d in detections} == {1.0}


def test_confusion_matrix_and_most_confused_pairs():
    names = ["cola", "cola_zero", "water"]
    labels = [0, 0, 0, 1, 1, 2, -1]
    preds = [1, 1, 0, 1, 0, 2, 0]  # the background crop is left out
    matrix, pairs = confusion(labels, preds, names)
    np.testing.assert_array_equal(matrix, [[1, 2, 0], [1, 1, 0], [0, 0, 1]])
    assert pairs == [("cola", "cola_zero", 2), ("cola_zero", "cola", 1)]


def test_loaders_read_classes_and_predictions(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"7": "cola_zero", "3": "cola", "12": "water"}))
    assert load_class_ids(tmp_path) == [3, 7, 12]
    path = tmp_path / "test_predictions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*PREDICTION_FIELDS, "proto_pred", "proto_similarity"])
        writer.writeheader()
        writer.writerow({"crop": "test/0.png", "label": 0, "pred": 1, "confidence": 0.7, "proto_pred": 1, "proto_similarity": 0.5})
    assert read_csv(path, PREDICTION_FIELDS)[0]["pred"] == "1"
    with pytest.raises(SkulabError, match="missing columns"):
        read_csv(path, ("crop", "score"))
    with pytest.raises(SkulabError, match=r"absent\.csv: missing"):
        read_csv(tmp_path / "absent.csv")

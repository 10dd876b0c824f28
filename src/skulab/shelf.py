"""End-to-end shelf metrics: the detector's boxes named by the recognizer, scored against the test truth.

Per-crop accuracy hides what a shelf audit sees: a missed product, a false alarm or a wrong name all
make an image's stock count wrong. Here every detected test crop becomes a class-aware detection
(the recognizer's class replaces the detector's, score = detector score x recognizer confidence)
and is scored two ways: COCO mAP (pycocotools) and count accuracy, the share of test images where
every SKU's count is exactly right.

Inputs (written by other stages):
- the COCO test annotations, data/prepared/annotations/test.json (`skulab.data.coco.load_split`);
- the crop manifest, data/crops/manifest.csv: a test row's x, y, w, h is the detector's box (the crop
  image is cut with padding; the box is not), `source_image` is the COCO image's `file_name`, and
  `score` is the detector score (empty for ground-truth test crops, taken as 1);
- a recognizer cell's metrics/recognizer/<cell>/test_predictions.csv: crop, label, pred, confidence,
  where label and pred index the classes of data/crops/classes.json sorted by class id (label -1:
  a background crop, a detection that matched no product).
"""

import contextlib
import copy
import io
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import confusion_matrix

from skulab.errors import SkulabError
from skulab.recognition.data import load_classes

PREDICTION_FIELDS = ("crop", "label", "pred", "confidence")
COCO_MAX_DETS = 100


def load_class_ids(crops: Path) -> list[int]:
    """The COCO category id of each recognizer class index: classes.json's ids, sorted."""
    return sorted(load_classes(Path(crops)))


def _detector_score(row: dict) -> float:
    """A ground-truth crop has no detector score: it is certain."""
    return 1.0 if row.get("score") in ("", None) else float(row["score"])


def _checked_predictions(test_rows: list[dict], predictions: list[dict]) -> dict[str, dict]:
    """Predictions by crop, one for each test crop and no other: a mismatch means stale files."""
    by_crop = {p["crop"]: p for p in predictions}
    crops = {row["crop"] for row in test_rows}
    if len(by_crop) != len(predictions) or set(by_crop) != crops:
        raise SkulabError(
            f"test predictions do not match the manifest's test crops: {len(crops - set(by_crop))} crops without a "
            f"prediction, {len(set(by_crop) - crops)} predictions for unknown crops, {len(predictions) - len(by_crop)} duplicates"
        )
    return by_crop


def shelf_detections(gt_coco: dict, manifest_rows: list[dict], predictions: list[dict], class_ids: list[int]) -> list[dict]:
    """COCO results for the test crops: the detector's box, the recognizer's class, the product of their scores.

    Each result also keeps `detector_score`, which `count_accuracy` thresholds. Background crops
    are kept: the recognizer names them as products, as it would in a store.
    """
    image_ids = {info["file_name"]: info["id"] for info in gt_coco["images"]}
    test_rows = [row for row in manifest_rows if row["split"] == "test"]
    by_crop = _checked_predictions(test_rows, predictions)
    detections = []
    for row in test_rows:
        if row["source_image"] not in image_ids:
            raise SkulabError(f"crop {row['crop']}: source image {row['source_image']} is not in the test annotations")
        prediction = by_crop[row["crop"]]
        pred = int(prediction["pred"])
        if not 0 <= pred < len(class_ids):
            raise SkulabError(f"crop {row['crop']}: predicted class index {pred} is outside the {len(class_ids)} classes")
        detector_score = _detector_score(row)
        detections.append(
            {
                "image_id": image_ids[row["source_image"]],
                "category_id": class_ids[pred],
                "bbox": [float(row[key]) for key in ("x", "y", "w", "h")],
                "score": detector_score * float(prediction["confidence"]),
                "detector_score": detector_score,
            }
        )
    return detections


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth(gt_coco: dict) -> dict:
    """A copy COCOeval may index and mutate (prepare writes every field it reads: area, iscrowd, id)."""
    return copy.deepcopy({key: gt_coco[key] for key in ("images", "annotations", "categories")})


def _mean_precision(precision: np.ndarray) -> float:
    """COCO's summary AP: the mean over IoU thresholds, recall points and classes with ground truth."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def shelf_map(gt_coco: dict, detections: list[dict]) -> dict:
    """Class-aware COCO bbox mAP@[.5:.95] and mAP@.5 of `detections` (COCO results) on `gt_coco`.

    Classes without ground truth are left out of the mean, as in COCO. The per-image detection
    limit is raised above COCO's 100 when an image has more, so a dense shelf is not cut short.
    """
    if not gt_coco["annotations"]:
        raise SkulabError("shelf mAP: the test annotations have no boxes")
    if not detections:
        return {"mAP": 0.0, "mAP50": 0.0}
    truth = _quiet_coco(_ground_truth(gt_coco))
    with contextlib.redirect_stdout(io.StringIO()):
        results = truth.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(truth, results, iouType="bbox")
        per_image = Counter(d["image_id"] for d in detections)
        evaluator.params.maxDets = [1, 10, max(COCO_MAX_DETS, max(per_image.values()))]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, all areas, most detections
    at_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    return {"mAP": _mean_precision(precision), "mAP50": _mean_precision(precision[at_50])}


def count_accuracy(gt_coco: dict, detections: list[dict], min_detector_score: float = 0.0) -> float:
    """Share of images where every SKU's count is exactly right, as a shelf audit needs.

    A detection counts as one product of its class when its `detector_score` (its `score` if it has
    none) is at least `min_detector_score`: whether a product is there is the detector's call, which
    SKU it is the recognizer's. The default counts every detection given, so the crop stage's
    crop.score_threshold is the operating point.
    """
    truth = {info["id"]: Counter() for info in gt_coco["images"]}
    found = {image_id: Counter() for image_id in truth}
    for ann in gt_coco["annotations"]:
        truth[ann["image_id"]][ann["category_id"]] += 1
    for det in detections:
        if det.get("detector_score", det["score"]) >= min_detector_score:
            found[det["image_id"]][det["category_id"]] += 1
    return sum(found[image_id] == truth[image_id] for image_id in truth) / len(truth)


def shelf_metrics(gt_coco: dict, manifest_rows: list[dict], predictions: list[dict], class_ids: list[int]) -> dict:
    """mAP, mAP50 and count accuracy of one recognizer cell on the test shelves, and the detections scored."""
    detections = shelf_detections(gt_coco, manifest_rows, predictions, class_ids)
    return shelf_map(gt_coco, detections) | {"count_accuracy": count_accuracy(gt_coco, detections), "detections": len(detections)}


def confusion(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str], top: int = 10) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """The confusion matrix over product crops (rows: true class, columns: predicted) and its largest
    off-diagonal cells as (true name, predicted name, count), most frequent first.

    Background crops (label -1) have no true class and are left out; look-alike SKUs show up as the
    top pairs.
    """
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    products = labels >= 0
    matrix = confusion_matrix(labels[products], preds[products], labels=np.arange(len(class_names)))
    off_diagonal = [(int(matrix[t, p]), t, p) for t, p in zip(*np.nonzero(matrix)) if t != p]
    pairs = sorted(off_diagonal, key=lambda cell: (-cell[0], cell[1], cell[2]))[:top]
    return matrix, [(class_names[t], class_names[p], count) for count, t, p in pairs]

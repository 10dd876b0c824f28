"""The crop stage with a detector: test crops from its boxes, labelled by IoU matching, misses counted."""

import csv
import json

import pytest
import torch

from skulab.crop import choose_detector, crop_dataset
from skulab.data.coco import load_card, load_split
from skulab.errors import SkulabError
from skulab.recognition.data import load_crops
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
    return {"anns": anns, "missed": missed, "stats": stats, "rows": rows, "crops": root / "crops", "names": {c["id"]: c["name"] for c in test["categories"]}, "params": params, "detections": path}


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
    test = load_crops(detected["crops"], "test")
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


def test_choose_detector_best_without_detectors_is_ground_truth(tmp_path):
    """detector.variants: {} (a recognition-only study): crop.detector best means ground-truth boxes."""
    assert choose_detector("best", [], tmp_path) is None


def _stored(crops, split):
    import numpy as np

    return np.load(crops / f"{split}.npy")


def test_stored_crops_are_the_padded_boxes_resized_once(tiny_prepared, tiny_params, tiny_crops):
    """Each stored crop is the padded box of its source image, resized (bilinear) to crop.stored_size."""
    import numpy as np
    from PIL import Image

    from skulab.crop import padded_box

    with open(tiny_crops / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    stored = _stored(tiny_crops, "val")
    size, padding = tiny_params.crop.stored_size, tiny_params.crop.padding
    for index in (0, len(rows) // 2, len(rows) - 1):
        row = rows[index]
        image = Image.open(tiny_prepared / "images" / row["source_image"]).convert("RGB")
        box = padded_box(*(float(row[k]) for k in "xywh"), padding, image.width, image.height)
        expected = np.asarray(image.crop(box).resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
        assert np.array_equal(stored[index], expected)


def test_a_pool_of_workers_cuts_the_same_crops(tiny_prepared, tiny_params, tmp_path, detected, monkeypatch):
    """crop.workers changes the speed, never the result."""
    import numpy as np

    import skulab.crop as crop_module

    pools, real_pool = [], crop_module.ProcessPoolExecutor
    monkeypatch.setattr(crop_module, "IMAGES_PER_WORKER", 1)  # the tiny set would not start a pool otherwise
    monkeypatch.setattr(crop_module, "ProcessPoolExecutor", lambda workers, **kw: pools.append(workers) or real_pool(workers, **kw))
    params = detected["params"].model_copy(update={"workers": 2})
    crop_dataset(tiny_prepared, tmp_path / "pool", params, load_card(tiny_prepared)["hash"], "frcnn", detected["detections"])
    assert (tmp_path / "pool/manifest.csv").read_bytes() == (detected["crops"] / "manifest.csv").read_bytes()
    for split in ("train", "val", "test", "test_gt"):
        assert np.array_equal(_stored(tmp_path / "pool", split), _stored(detected["crops"], split)), split
    assert pools == [2]


def test_each_source_image_is_decoded_once(tiny_prepared, tiny_params, tmp_path, detected, monkeypatch):
    """A test image gives both detected and ground-truth crops, from one decode."""
    from collections import Counter

    import skulab.crop as crop_module

    opened, real_open = Counter(), crop_module.Image.open
    monkeypatch.setattr(crop_module.Image, "open", lambda path, *a, **k: opened.update([str(path)]) or real_open(path, *a, **k))
    crop_dataset(tiny_prepared, tmp_path / "crops", detected["params"], "h", "frcnn", detected["detections"])
    assert opened and set(opened.values()) == {1}
    assert any("test/" in path for path in opened)


def _val_detections(prepared, tmp_path, detections):
    path = tmp_path / "val.bbox.json"
    path.write_text(json.dumps(detections))
    return path


def test_auto_score_threshold_maximises_val_f1(tiny_prepared, tiny_params, tmp_path, detected):
    """auto picks the threshold with the best F1 of matched val detections, checked against matching
    at every candidate threshold from scratch; the chosen value is recorded and used on test."""
    from skulab.crop import score_threshold_curve
    from skulab.matching import match
    import numpy as np

    val = load_split(tiny_prepared, "val")
    anns = sorted(val["annotations"], key=lambda a: a["id"])
    detections = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.2 + 0.7 * (i % 5) / 4, "category_id": 1} for i, a in enumerate(anns)]
    for i, a in enumerate(anns[:6]):  # false alarms at high and middling scores
        detections.append({"image_id": a["image_id"], "bbox": [0, 0, 6, 6], "score": 0.95 - 0.1 * i, "category_id": 1})
    params = detected["params"].model_copy(update={"score_threshold": "auto"})
    found = {}
    for d in detections:
        found.setdefault(d["image_id"], []).append(d)
    by_image = {i["id"]: found.get(i["id"], []) for i in val["images"]}
    chosen = score_threshold_curve(val, by_image, params)

    def f1_at(t):
        tp = n = 0
        for info in val["images"]:
            kept = sorted([d for d in by_image[info["id"]] if d["score"] >= t], key=lambda d: -d["score"])
            gts = [a for a in val["annotations"] if a["image_id"] == info["id"]]
            m, _ = match(np.array([d["bbox"] for d in kept]).reshape(-1, 4), np.array([d["score"] for d in kept]), np.array([g["bbox"] for g in gts]).reshape(-1, 4), params.match_iou)
            tp, n = tp + int((m >= 0).sum()), n + len(kept)
        precision, recall = tp / n, tp / len(val["annotations"])
        return 2 * precision * recall / (precision + recall) if tp else 0.0

    brute = max(sorted({d["score"] for d in detections}, reverse=True), key=f1_at)
    assert chosen["threshold"] == pytest.approx(brute) and chosen["val_f1"] == pytest.approx(f1_at(brute))
    _val_detections(tiny_prepared, detected["detections"].parent, detections)
    stats = crop_dataset(tiny_prepared, tmp_path / "crops", params, "h", "frcnn", detected["detections"])
    assert stats["score_threshold"]["value"] == pytest.approx(brute) and stats["score_threshold"]["chosen_on"] == "val F1"
    assert json.loads((tmp_path / "crops/stats.json").read_text())["score_threshold"]["value"] == pytest.approx(brute)
    (detected["detections"].parent / "val.bbox.json").unlink()


def test_auto_score_threshold_without_val_detections_names_the_file(tiny_prepared, tmp_path, detected):
    params = detected["params"].model_copy(update={"score_threshold": "auto"})
    with pytest.raises(SkulabError, match=r"val\.bbox\.json: detections missing"):
        crop_dataset(tiny_prepared, tmp_path / "crops", params, "h", "frcnn", detected["detections"])


def test_auto_score_threshold_with_no_matching_val_detection_is_one_line(tiny_prepared, tmp_path, detected):
    val = load_split(tiny_prepared, "val")
    path = _val_detections(tiny_prepared, tmp_path, [{"image_id": val["images"][0]["id"], "bbox": [0, 0, 3, 3], "score": 0.9, "category_id": 1}])
    (tmp_path / "test.bbox.json").write_bytes(detected["detections"].read_bytes())
    params = detected["params"].model_copy(update={"score_threshold": "auto"})
    with pytest.raises(SkulabError, match="crop.score_threshold: auto found no val detection matching a product"):
        crop_dataset(tiny_prepared, tmp_path / "crops", params, "h", "frcnn", tmp_path / "test.bbox.json")
    assert path.is_file()


def test_dataset_card_gives_the_crop_store_ram_estimate(tiny_prepared):
    card = json.loads((tiny_prepared / "card.json").read_text())
    boxes = sum(v["boxes"] for v in card["splits"].values())
    text = (tiny_prepared / "card.md").read_text()
    assert f"{boxes} crops x S² x 3 bytes" in text and f"{boxes * 3 * 74**2 / 2**20:,.0f} MiB at 74 px" in text

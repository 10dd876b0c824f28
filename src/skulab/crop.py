"""The crop stage: cut every product out of its box into a crop dataset with a manifest.

Train and val crops come from ground-truth boxes (what the recognizer learns from). Test crops come
from a trained detector's boxes, each labelled with the class of the ground-truth box it matches
(IoU >= crop.match_iou) or as background, and the ground-truth boxes no detection found are counted:
the recognizer's test scores are then end to end. The manifest records each crop's source image,
box, class, origin, detector, score and IoU.
"""

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from skulab.data.coco import class_names, load_split
from skulab.matching import match
from skulab.errors import SkulabError
from skulab.io import atomic_path, read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from skulab.layout import GT_TEST, SPLITS
from skulab.params import CropParams

BACKGROUND_ID, BACKGROUND = -1, "background"
SELECT_METRIC = "val_bbox_mAP"

MANIFEST_FIELDS = ("crop", "split", "source_image", "x", "y", "w", "h", "class_id", "class_name", "origin", "detector", "score", "iou")


def padded_box(x: float, y: float, w: float, h: float, padding: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `padding` of its size on each side, clipped to the image, as (left, top, right, bottom)."""
    px, py = w * padding, h * padding
    left, top = max(0, round(x - px)), max(0, round(y - py))
    right, bottom = min(width, round(x + w + px)), min(height, round(y + h + py))
    return left, top, right, bottom


def choose_detector(choice: str, variants: list[str], metrics_root: Path) -> str | None:
    """The detector whose boxes give the test crops: a named cell, the best by val mAP, or None."""
    if choice == "none":
        return None
    names = variants if choice == "best" else [choice]
    scores = {}
    for name in names:
        path = metrics_root / name / "final.json"
        if not path.is_file():
            raise SkulabError(f"{path}: missing; run `dvc repro train_detector@{name}` first (crop.detector: {choice})")
        scores[name] = read_json(path)[SELECT_METRIC]
    return max(scores, key=lambda name: (scores[name], -names.index(name)))


def _save_crop(image: Image.Image, box: tuple[int, int, int, int], out: Path, crop_name: str) -> None:
    buffer = io.BytesIO()
    image.crop(box).save(buffer, format="PNG")
    write_bytes_atomic(out / "images" / crop_name, buffer.getvalue())


def crop_split(prepared: Path, out: Path, split: str, params: CropParams, name: str | None = None) -> tuple[list[dict], int]:
    """Ground-truth crops of one split (written as split `name`, default the same), and how many
    boxes were too small to crop."""
    name = name or split
    coco = load_split(prepared, split)
    names = class_names(coco)
    images = {info["id"]: info for info in coco["images"]}
    rows, too_small = [], 0
    anns = sorted(coco["annotations"], key=lambda a: (a["image_id"], a["id"]))
    current_id, image = None, None
    for ann in tqdm(anns, desc=f"crop {split}", unit="box"):
        x, y, w, h = ann["bbox"]
        if min(w, h) < params.min_box_size:
            too_small += 1
            continue
        info = images[ann["image_id"]]
        if ann["image_id"] != current_id:
            image = Image.open(prepared / "images" / info["file_name"]).convert("RGB")
            current_id = ann["image_id"]
        box = padded_box(x, y, w, h, params.padding, image.width, image.height)
        crop_name = f"{name}/{ann['id']:07d}.png"
        _save_crop(image, box, out, crop_name)
        rows.append(
            {
                "crop": crop_name,
                "split": name,
                "source_image": info["file_name"],
                "x": x, "y": y, "w": w, "h": h,
                "class_id": ann["category_id"],
                "class_name": names[ann["category_id"]],
                "origin": "ground_truth",
                "detector": "", "score": "", "iou": "",
            }
        )
    return rows, too_small


def load_detections(path: Path, image_ids: set[int]) -> dict[int, list[dict]]:
    """mmdet's COCO results file (image_id, bbox, score), grouped by image."""
    if not path.is_file():
        raise SkulabError(f"{path}: detections missing; run the detector's train_detector stage first")
    results = read_json(path)
    if not isinstance(results, list) or any(not {"image_id", "bbox", "score"} <= set(r) for r in results):
        raise SkulabError(f"{path}: expected a COCO results list of {{image_id, bbox, score}}")
    by_image = defaultdict(list)
    for result in results:
        if result["image_id"] not in image_ids:
            raise SkulabError(f"{path}: image_id {result['image_id']} is not in the test split")
        by_image[result["image_id"]].append(result)
    return by_image


def crop_detections(prepared: Path, out: Path, params: CropParams, detector: str, detections: Path) -> tuple[list[dict], dict]:
    """Test crops from a detector's boxes, matched to ground truth; returns the rows and counts."""
    coco = load_split(prepared, "test")
    names = class_names(coco)
    truths = defaultdict(list)
    for ann in coco["annotations"]:
        truths[ann["image_id"]].append(ann)
    found = load_detections(detections, {info["id"] for info in coco["images"]})
    rows, counts = [], {"gt_boxes": len(coco["annotations"]), "matched": 0, "background": 0, "missed_gt": 0, "skipped_too_small": 0}
    for info in tqdm(sorted(coco["images"], key=lambda i: i["id"]), desc=f"crop test ({detector})", unit="image"):
        kept = [d for d in found[info["id"]] if d["score"] >= params.score_threshold]
        kept = sorted(kept, key=lambda d: -d["score"])[: params.max_detections]
        gts = truths[info["id"]]
        matched, ious = match(
            np.array([d["bbox"] for d in kept]).reshape(-1, 4),
            np.array([d["score"] for d in kept]),
            np.array([g["bbox"] for g in gts]).reshape(-1, 4),
            params.match_iou,
        )
        counts["missed_gt"] += len(gts) - int((matched >= 0).sum())
        with Image.open(prepared / "images" / info["file_name"]) as opened:
            image = opened.convert("RGB")
        for rank, (det, truth, iou) in enumerate(zip(kept, matched, ious)):
            x, y, w, h = det["bbox"]
            if min(w, h) < params.min_box_size:
                counts["skipped_too_small"] += 1
                continue
            class_id = gts[truth]["category_id"] if truth >= 0 else BACKGROUND_ID
            counts["matched" if truth >= 0 else "background"] += 1
            crop_name = f"test/{info['id']:07d}_{rank:03d}.png"
            _save_crop(image, padded_box(x, y, w, h, params.padding, image.width, image.height), out, crop_name)
            rows.append(
                {
                    "crop": crop_name,
                    "split": "test",
                    "source_image": info["file_name"],
                    "x": round(x, 2), "y": round(y, 2), "w": round(w, 2), "h": round(h, 2),
                    "class_id": class_id,
                    "class_name": names[class_id] if truth >= 0 else BACKGROUND,
                    "origin": "detection",
                    "detector": detector,
                    "score": round(det["score"], 5),
                    "iou": round(float(iou), 4),
                }
            )
    counts["crops"] = len(rows)
    return rows, counts


def crop_dataset(prepared: Path, out: Path, params: CropParams, dataset_hash: str, detector: str | None = None, detections: Path | None = None) -> dict:
    """Write crops, manifest.csv, classes.json and stats.json to `out` atomically; return the stats.

    With a `detector`, the test crops come from its `detections` file instead of ground truth.
    """
    stats: dict = {"dataset_hash": dataset_hash, "test_detector": detector or "none"}
    with atomic_path(out) as root:
        rows, ground_truth = [], {split: split for split in SPLITS}  # crop split name -> annotation split
        if detector is not None:
            rows, stats["test"] = crop_detections(prepared, root, params, detector, detections)
            # The same products from their true boxes too, to show what detection costs recognition.
            ground_truth = {"train": "train", "val": "val", GT_TEST: "test"}
        for name, split in ground_truth.items():
            split_rows, too_small = crop_split(prepared, root, split, params, name=name)
            stats[name] = {"crops": len(split_rows), "skipped_too_small": too_small, "gt_boxes": len(split_rows) + too_small}
            rows += split_rows
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(root / "manifest.csv", buffer.getvalue())
        names = class_names(load_split(prepared, "train"))
        write_json_atomic(root / "classes.json", {str(k): v for k, v in sorted(names.items())})
        write_json_atomic(root / "stats.json", stats)
    return stats

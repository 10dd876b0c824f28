"""The crop stage: cut every product out of its box into a crop store with a manifest.

Train and val crops come from ground-truth boxes (what the recognizer learns from). Test crops come
from a trained detector's boxes, each labelled with the class of the ground-truth box it matches
(IoU >= crop.match_iou) or as background, and the ground-truth boxes no detection found are counted:
the recognizer's test scores are then end to end. The manifest records each crop's source image,
box, class, origin, detector, score and IoU.

Crops are stored decoded, as one uint8 array per split (`<split>.npy`, N x 3 x S x S with
S = crop.stored_size, rows in manifest order), which the recognizer memory-maps: nothing is
re-encoded, and a dataset bigger than RAM is paged in by the OS. Each source image is decoded once,
by a pool of processes (crop.workers), whatever splits and roles its crops have.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from skulab.detection import SELECT_METRIC
from skulab.data.coco import class_names, load_split
from skulab.errors import SkulabError
from skulab.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from skulab.layout import GT_TEST, SPLITS, crop_store
from skulab.matching import match

if TYPE_CHECKING:  # the params schema imports the model tables; pool workers import this module
    from skulab.params import CropParams

BACKGROUND_ID, BACKGROUND = -1, "background"
AUTO = "auto"  # crop.score_threshold chosen on val

MANIFEST_FIELDS = ("crop", "split", "source_image", "x", "y", "w", "h", "class_id", "class_name", "origin", "detector", "score", "iou")


def padded_box(x: float, y: float, w: float, h: float, padding: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `padding` of its size on each side, clipped to the image, as (left, top, right, bottom)."""
    px, py = w * padding, h * padding
    left, top = max(0, round(x - px)), max(0, round(y - py))
    right, bottom = min(width, round(x + w + px)), min(height, round(y + h + py))
    return left, top, right, bottom


def cut(image: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """One crop as the recognizer stores it: the box resized (bilinear) to a size x size HWC uint8 square."""
    return np.asarray(image.crop(box).resize((size, size), Image.BILINEAR))


def choose_detector(choice: str, variants: list[str], metrics_root: Path) -> str | None:
    """The detector whose boxes give the test crops: a named cell, the best by val mAP, or None
    (ground-truth boxes: crop.detector none, or best when there are no detectors)."""
    if choice == "none" or (choice == "best" and not variants):
        return None
    names = variants if choice == "best" else [choice]
    scores = {}
    for name in names:
        path = metrics_root / name / "final.json"
        if not path.is_file():
            raise SkulabError(f"{path}: missing; run `dvc repro train_detector@{name}` first (crop.detector: {choice})")
        scores[name] = read_json(path)[SELECT_METRIC]
    return max(scores, key=lambda name: (scores[name], -names.index(name)))


def load_detections(path: Path, image_ids: set[int], split: str = "test") -> dict[int, list[dict]]:
    """mmdet's COCO results file (image_id, bbox, score), grouped by image."""
    if not path.is_file():
        raise SkulabError(f"{path}: detections missing; run the detector's train_detector stage first")
    results = read_json(path)
    if not isinstance(results, list) or any(not {"image_id", "bbox", "score"} <= set(r) for r in results):
        raise SkulabError(f"{path}: expected a COCO results list of {{image_id, bbox, score}}")
    by_image = defaultdict(list)
    for result in results:
        if result["image_id"] not in image_ids:
            raise SkulabError(f"{path}: image_id {result['image_id']} is not in the {split} split")
        by_image[result["image_id"]].append(result)
    return by_image


def _top_detections(found: list[dict], threshold: float, max_detections: int) -> list[dict]:
    kept = [d for d in found if d["score"] >= threshold]
    return sorted(kept, key=lambda d: -d["score"])[:max_detections]


def _matched_detections(coco: dict, found: dict[int, list[dict]], params: CropParams, threshold: float):
    """Per image (by id): its kept detections, their matched ground-truth index (-1 none) and IoU, its ground truth."""
    truths = defaultdict(list)
    for ann in coco["annotations"]:
        truths[ann["image_id"]].append(ann)
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        kept = _top_detections(found[info["id"]], threshold, params.max_detections)
        gts = truths[info["id"]]
        matched, ious = match(
            np.array([d["bbox"] for d in kept]).reshape(-1, 4),
            np.array([d["score"] for d in kept]),
            np.array([g["bbox"] for g in gts]).reshape(-1, 4),
            params.match_iou,
        )
        yield info, kept, matched, ious, gts


def score_threshold_curve(coco: dict, found: dict[int, list[dict]], params: CropParams) -> dict:
    """Precision, recall and F1 of the matched detections at every score threshold, and the best one.

    Matching is greedy by score, so the matches of the detections above a threshold are the same
    whatever lies below it: one match of every detection (up to max_detections per image) gives the
    whole curve. A detection counts as right when it matches a ground-truth box (IoU >= match_iou).
    """
    scores, hits = [], []
    for _, kept, matched, _, _ in _matched_detections(coco, found, params, threshold=0.0):
        scores += [d["score"] for d in kept]
        hits += [m >= 0 for m in matched]
    gt_boxes = len(coco["annotations"])
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    true_positives = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    # Only the last detection of a run of equal scores is a threshold anyone can set.
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True] if len(sorted_scores) else np.zeros(0, dtype=bool)
    thresholds, tp = sorted_scores[last], true_positives[last]
    kept = np.flatnonzero(last) + 1
    precision = tp / kept if len(kept) else np.zeros(0)
    recall = tp / gt_boxes if gt_boxes else np.zeros_like(tp)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    if not len(f1) or f1.max() == 0:
        raise SkulabError("crop.score_threshold: auto found no val detection matching a product; set a number or check the detector")
    best = int(np.argmax(f1))  # the highest threshold among ties: fewer crops for the same F1
    return {
        "threshold": round(float(thresholds[best]), 5),
        "val_f1": float(f1[best]), "val_precision": float(precision[best]), "val_recall": float(recall[best]),
        "curve": {"threshold": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()},
    }


@dataclass
class _Requests:
    """The crops to cut, grouped by source image: one decode per image."""

    size: int
    padding: float
    by_image: dict[str, list[tuple[str, int, tuple[float, float, float, float]]]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, split: str, file_name: str, bbox) -> None:
        self.by_image[file_name].append((split, self.counts[split], tuple(bbox)))
        self.counts[split] += 1


def _cut_image(job: tuple[Path, list, int, float]) -> list[np.ndarray]:
    """Every crop of one image (a pool task): decoded once, each box padded, cut and resized."""
    path, requests, size, padding = job
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    return [cut(image, padded_box(*bbox, padding, image.width, image.height), size) for _, _, bbox in requests]


IMAGES_PER_WORKER = 32  # below this a worker costs more to start than it saves


def _workers(requested: int, images: int) -> int:
    """crop.workers, or one per core (0), but no more than the images keep busy."""
    return max(1, min(requested or os.cpu_count() or 1, images // IMAGES_PER_WORKER))


def _cut_all(prepared: Path, out: Path, requests: _Requests, workers: int) -> None:
    """Decode each image once (in `workers` processes), write every crop into its split's store."""
    stores = {
        split: np.lib.format.open_memmap(crop_store(out, split), mode="w+", dtype=np.uint8, shape=(count, 3, requests.size, requests.size))
        for split, count in requests.counts.items()
    }
    files = sorted(requests.by_image)
    jobs = ((prepared / "images" / name, requests.by_image[name], requests.size, requests.padding) for name in files)
    workers = _workers(workers, len(files))
    progress = tqdm(total=sum(requests.counts.values()), desc=f"crop ({workers} process{'es' if workers > 1 else ''})", unit="crop")
    if workers == 1:
        results = map(_cut_image, jobs)
        pool = None
    else:  # fork where there is one: spawn would re-import the stage's torch and MLflow in every worker
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        results = pool.map(_cut_image, jobs, chunksize=max(1, len(files) // (workers * 8)))
    try:
        for name, crops in zip(files, results):
            for (split, row, _), crop in zip(requests.by_image[name], crops):
                stores[split][row] = crop.transpose(2, 0, 1)
            progress.update(len(crops))
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for store in stores.values():
        store.flush()


def _ground_truth_rows(coco: dict, name: str, params: CropParams, requests: _Requests) -> tuple[list[dict], int]:
    """Ground-truth crops of one split (written as split `name`), and how many boxes were too small to crop."""
    names = class_names(coco)
    images = {info["id"]: info for info in coco["images"]}
    rows, too_small = [], 0
    for ann in sorted(coco["annotations"], key=lambda a: (a["image_id"], a["id"])):
        x, y, w, h = ann["bbox"]
        if min(w, h) < params.min_box_size:
            too_small += 1
            continue
        info = images[ann["image_id"]]
        requests.add(name, info["file_name"], ann["bbox"])
        rows.append(
            {
                "crop": f"{name}/{ann['id']:07d}",
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


def _detection_rows(coco: dict, found: dict, params: CropParams, threshold: float, detector: str, requests: _Requests) -> tuple[list[dict], dict]:
    """Test crops from a detector's boxes, matched to ground truth; returns the rows and counts."""
    names = class_names(coco)
    rows, counts = [], {"gt_boxes": len(coco["annotations"]), "matched": 0, "background": 0, "missed_gt": 0, "skipped_too_small": 0}
    for info, kept, matched, ious, gts in _matched_detections(coco, found, params, threshold):
        counts["missed_gt"] += len(gts) - int((matched >= 0).sum())
        for rank, (det, truth, iou) in enumerate(zip(kept, matched, ious)):
            x, y, w, h = det["bbox"]
            if min(w, h) < params.min_box_size:
                counts["skipped_too_small"] += 1
                continue
            class_id = gts[truth]["category_id"] if truth >= 0 else BACKGROUND_ID
            counts["matched" if truth >= 0 else "background"] += 1
            requests.add("test", info["file_name"], det["bbox"])
            rows.append(
                {
                    "crop": f"test/{info['id']:07d}_{rank:03d}",
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


def resolve_threshold(prepared: Path, params: CropParams, detections: Path | None) -> tuple[float, dict | None]:
    """crop.score_threshold as a number, and the val curve it was chosen on when it is `auto`."""
    if params.score_threshold != AUTO:
        return float(params.score_threshold), None
    if detections is None:
        return 0.0, None  # ground-truth test crops: no detection to threshold
    val = load_split(prepared, "val")
    val_file = detections.with_name("val.bbox.json")
    chosen = score_threshold_curve(val, load_detections(val_file, {i["id"] for i in val["images"]}, "val"), params)
    return chosen["threshold"], chosen


def crop_dataset(
    prepared: Path, out: Path, params: CropParams, dataset_hash: str, detector: str | None = None, detections: Path | None = None,
    resolved: tuple[float, dict | None] | None = None,
) -> dict:
    """Write the crop stores, manifest.csv, classes.json and stats.json to `out` atomically; return the stats.

    With a `detector`, the test crops come from its `detections` file (test.bbox.json; with
    score_threshold auto, its val.bbox.json beside it picks the threshold) instead of ground truth.
    `resolved` is resolve_threshold's answer when the caller has it already (the stage draws its curve).
    """
    stats: dict = {"dataset_hash": dataset_hash, "test_detector": detector or "none", "stored_size": params.stored_size}
    threshold, chosen = resolved or resolve_threshold(prepared, params, detections if detector else None)
    if detector is not None:
        stats["score_threshold"] = {"value": threshold, "chosen_on": "val F1" if chosen else "crop.score_threshold"}
        if chosen:
            stats["score_threshold"].update({k: chosen[k] for k in ("val_f1", "val_precision", "val_recall")})
    requests = _Requests(params.stored_size, params.padding)
    rows, ground_truth = [], {split: split for split in SPLITS}  # crop split name -> annotation split
    if detector is not None:
        test = load_split(prepared, "test")
        found = load_detections(detections, {info["id"] for info in test["images"]})
        rows, stats["test"] = _detection_rows(test, found, params, threshold, detector, requests)
        # The same products from their true boxes too, to show what detection costs recognition.
        ground_truth = {"train": "train", "val": "val", GT_TEST: "test"}
    for name, split in ground_truth.items():
        split_rows, too_small = _ground_truth_rows(load_split(prepared, split), name, params, requests)
        stats[name] = {"crops": len(split_rows), "skipped_too_small": too_small, "gt_boxes": len(split_rows) + too_small}
        rows += split_rows
    total = sum(requests.counts.values())
    stats["store"] = {
        "crops": total,
        "bytes": total * 3 * params.stored_size**2,
        "ram_estimate": f"{total} crops x {params.stored_size}^2 x 3 bytes = {total * 3 * params.stored_size**2 / 2**20:.1f} MiB (memory-mapped)",
    }
    with atomic_path(out) as root:
        root.mkdir(parents=True)
        _cut_all(prepared, root, requests, params.workers)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(root / "manifest.csv", buffer.getvalue())
        names = class_names(load_split(prepared, "train"))
        write_json_atomic(root / "classes.json", {str(k): v for k, v in sorted(names.items())})
        write_json_atomic(root / "stats.json", stats)
    return stats

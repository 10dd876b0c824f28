"""Matching detections to ground-truth boxes (COCO-style greedy, by score), without mmdet.

The crop stage labels each detected crop with the class of the ground-truth box it matches, so the
recognizer is scored end to end: a detection matching nothing is background, a box no detection
matched is a miss.
"""

import numpy as np


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every box in `boxes` (N x 4) with every box in `others` (M x 4), both COCO [x, y, w, h]."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(detections: np.ndarray, scores: np.ndarray, truths: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the index of the ground-truth box it matches (-1: none) and its best IoU.

    Highest score first, each detection takes the unmatched ground-truth box it overlaps most, if
    that IoU is at least `min_iou`; a ground-truth box is matched at most once, so a duplicate
    detection of a product is background. The IoU returned for an unmatched detection is its
    largest overlap with any ground-truth box, which tells a duplicate from a false alarm.
    """
    ious = iou_matrix(detections, truths)
    matched = np.full(len(ious), -1, dtype=np.int64)
    best_iou = ious.max(axis=1) if ious.shape[1] else np.zeros(len(ious))
    taken = np.zeros(ious.shape[1], dtype=bool)
    for det in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if not ious.shape[1]:
            break
        candidates = np.where(taken, -1.0, ious[det])
        truth = int(candidates.argmax())
        if candidates[truth] >= min_iou:
            matched[det], taken[truth] = truth, True
            best_iou[det] = ious[det, truth]
    return matched, best_iou

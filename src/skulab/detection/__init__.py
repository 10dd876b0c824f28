"""The detector stage on mmdetection: configs from params, training, val and test detections.

This file imports nothing heavy: crop, evaluate and package read the selection metric's name here.
"""

# A detector cell's val COCO bbox mAP: mmengine keeps each cell's best checkpoint by it, and crop,
# package and the report pick and rank detectors by it (final.json / history.csv column).
SELECT_METRIC = "val_bbox_mAP"


def mmdet_metric_key(metric: str) -> str:
    """skulab's metric name -> mmdet's evaluator key ('val_bbox_mAP' -> 'coco/bbox_mAP'); detection.train.metric_name inverts it."""
    return "coco/" + metric.removeprefix("val_").removeprefix("test_")

"""COCO bbox metric that scores a detector with no detections at all as 0, not as 'no result'.

mmdet's CocoMetric returns nothing when no image has a detection (typical of the first epochs of
a detector trained from scratch); mmengine then skips best-checkpoint selection and the epoch has
no val mAP. Zero is the honest score. Registered in mmdet's metric registry, so the dumped config
also runs under mmdet's own tools/train.py (through `custom_imports`).
"""

from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS


@METRICS.register_module()
class ZeroIfEmptyCocoMetric(CocoMetric):
    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if metrics or self.format_only:
            return metrics
        items = self.metric_items or ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
        return {f"{metric}_{item}": 0.0 for metric in self.metrics for item in items}

"""DVC stage `crop`: cut products out of their boxes into data/crops with a manifest.

Train and val crops come from ground-truth boxes; test crops from the detector `crop.detector`
names (or the best one by val mAP), matched to ground truth.
"""

import argparse

import mlflow

from skulab.crop import choose_detector, crop_dataset
from skulab.data.coco import load_card
from skulab.errors import exit_on_user_error
from skulab.layout import CROPS, DETECTIONS, DETECTOR_METRICS, GT_TEST, PREPARED, SPLITS
from skulab.params import load_params
from skulab.tracking import stage_run


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "detector", "crop"))
    dataset_hash = load_card(PREPARED)["hash"]
    detector = choose_detector(params.crop.detector, list(params.detector.variants), DETECTOR_METRICS)
    with stage_run("crop", params.mlflow.experiment, {"crop": params.crop}, dataset_hash):
        mlflow.set_tag("crop.test_detector", detector or "none")
        detections = DETECTIONS / detector / "test.bbox.json" if detector else None
        stats = crop_dataset(PREPARED, CROPS, params.crop, dataset_hash, detector, detections)
        for split in (*SPLITS, GT_TEST):
            if split in stats:
                mlflow.log_metrics({f"{split}_{key}": value for key, value in stats[split].items()})
        mlflow.log_artifact(str(CROPS / "manifest.csv"), artifact_path="crops")
        mlflow.log_artifact(str(CROPS / "stats.json"), artifact_path="crops")


if __name__ == "__main__":
    main()

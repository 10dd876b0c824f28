"""DVC stage `crop`: cut products out of their boxes into data/crops (a decoded store per split) with a manifest.

Train and val crops come from ground-truth boxes; test crops from the detector `crop.detector`
names (or the best one by val mAP), matched to ground truth, above `crop.score_threshold`
(`auto`: chosen on the detector's val boxes). With no detector, every crop is ground truth.
"""

import argparse

from skulab.crop import choose_detector, crop_dataset, resolve_threshold
from skulab.data.coco import load_card
from skulab.errors import exit_on_user_error
from skulab.layout import CROPS, DETECTIONS, DETECTOR_METRICS, GT_TEST, PREPARED, SPLITS, THRESHOLD_FIGURE
from skulab.params import load_params
from skulab.plots import plot_nothing, plot_score_threshold
from skulab.tracking import MlflowLogger, stage_run



@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "detector", "crop"))
    dataset_hash = load_card(PREPARED)["hash"]
    detector = choose_detector(params.crop.detector, list(params.detector.variants), DETECTOR_METRICS)
    with stage_run("crop", params.mlflow.experiment, {"crop": params.crop}, dataset_hash):
        log = MlflowLogger()  # the run stage_run opened
        log.set_tags({"crop.test_detector": detector or "none"})
        detections = DETECTIONS / detector / "test.bbox.json" if detector else None
        resolved = resolve_threshold(PREPARED, params.crop, detections)  # the number, and the val curve it was chosen on
        stats = crop_dataset(PREPARED, CROPS, params.crop, dataset_hash, detector, detections, resolved)
        for split in (*SPLITS, GT_TEST):
            if split in stats:
                log.log_metrics({f"{split}_{key}": value for key, value in stats[split].items()})
        threshold = stats.get("score_threshold")
        if threshold:
            log.log_metrics({f"score_threshold_{k}" if k != "value" else "score_threshold": v for k, v in threshold.items() if k != "chosen_on"})
        curve = resolved[1]["curve"] if resolved[1] else None
        if curve:
            plot_score_threshold(curve, threshold["value"], THRESHOLD_FIGURE, f"val detections of {detector}: threshold {threshold['value']:.3f}, F1 {threshold['val_f1']:.3f}")
            log.log_artifact(str(THRESHOLD_FIGURE), artifact_path="crops")
        else:
            why = "crop.score_threshold is a number" if detector else "no detector: test crops are ground-truth boxes"
            plot_nothing(THRESHOLD_FIGURE, f"no score-threshold curve ({why})")
        log.log_artifact(str(CROPS / "manifest.csv"), artifact_path="crops")
        log.log_artifact(str(CROPS / "stats.json"), artifact_path="crops")
        print(f"crop: {stats['store']['ram_estimate']} in {CROPS}", flush=True)


if __name__ == "__main__":
    main()

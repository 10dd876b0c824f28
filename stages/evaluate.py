"""DVC stage `evaluate`: collect every recognizer and detector cell into metrics/summary.{json,md,png}."""

import argparse

import mlflow

from skulab.errors import exit_on_user_error
from skulab.layout import DETECTOR_METRICS, METRICS, RECOGNIZER_METRICS
from skulab.params import load_params
from skulab.summary import load_cells, load_detectors, load_histories, summarize, write_summary
from skulab.tracking import stage_run


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "detector", "recognizer", "evaluate"))
    variants, seeds = list(params.recognizer.variants), params.recognizer.seeds
    cells = load_cells(RECOGNIZER_METRICS, variants, seeds)
    dataset_hash = next(iter(next(iter(cells.values())).values()))["dataset_hash"]
    detectors = load_detectors(DETECTOR_METRICS, list(params.detector.variants))
    read = {"evaluate": params.evaluate, "recognizer.seeds": seeds, "recognizer.variant_names": variants, "detector.variant_names": list(detectors)}
    with stage_run("evaluate", params.mlflow.experiment, read, dataset_hash):
        summary = summarize(cells, params.evaluate.rank_by, detectors)
        for path in write_summary(summary, load_histories(RECOGNIZER_METRICS, cells), METRICS):
            mlflow.log_artifact(str(path), artifact_path="summary")
        for name, entry in summary["variants"].items():
            mlflow.log_metrics({f"{name}.{m}": s["mean"] for m, s in entry.items() if m.startswith("test_")})
        for name, entry in summary["detectors"].items():
            mlflow.log_metrics({f"detector.{name}.{m}": entry[m] for m in ("val_bbox_mAP", "test_bbox_mAP")})
        print(f"best variant by {summary['rank_by']}: {summary['best_variant']}")


if __name__ == "__main__":
    main()

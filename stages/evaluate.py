"""DVC stage `evaluate`: every recognizer and detector cell into reports/report.md (with its figures
beside it) and metrics/summary.{json,md}, ranked on val, compared with the baseline seed by seed."""

import argparse

from skulab.errors import exit_on_user_error
from skulab.io import write_json_atomic, write_text_atomic
from skulab.layout import CROPS, DETECTOR_METRICS, PREPARED, RECOGNIZER_METRICS, REPORT_MD, REPORTS, SUMMARY_JSON, SUMMARY_MD
from skulab.params import load_params
from skulab.report import render_summary, write_report
from skulab.summary import (
    DETECTOR_RANK_BY, TEST_METRICS, add_detector_convergence, add_shelf, class_names, confusion_of, load_cells, load_detector_histories, load_detectors,
    load_histories, shelf_per_cell, summarize,
)
from skulab.tracking import MlflowLogger, stage_run


def headline_metrics(summary: dict) -> dict[str, float]:
    """What the MLflow run shows at a glance: per variant its means, Δ vs baseline, Holm p and flags."""
    rank_by, metrics = summary["rank_by"], {}
    for name, entry in summary["variants"].items():
        for metric in (rank_by, *TEST_METRICS):
            if metric in entry:
                metrics[f"{name}.{metric}"] = entry[metric]["mean"]
        comparison = entry.get("vs_baseline", {}).get(rank_by)
        if comparison is not None:
            metrics[f"{name}.delta_{rank_by}"] = comparison["diff_mean"]
            if comparison["p_holm"] is not None:
                metrics[f"{name}.p_holm_{rank_by}"] = comparison["p_holm"]
        metrics[f"{name}.not_converged"] = float(entry["convergence"]["rising"])
        for metric, described in entry.get("shelf", {}).items():
            metrics[f"{name}.shelf_{metric}"] = described["mean"]
    best = summary["variants"][summary["best_variant"]]
    metrics.update({f"best.{m}": best[m]["mean"] for m in (rank_by, summary["reported"]) if m in best})
    for name, entry in summary["detectors"].items():
        metrics.update({f"detector.{name}.{m}": entry[m] for m in (DETECTOR_RANK_BY, "test_bbox_mAP") if m in entry})
    return metrics


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "detector", "recognizer", "evaluate"))
    settings, seeds = params.evaluate, params.recognizer.seeds
    cells = load_cells(RECOGNIZER_METRICS, list(params.recognizer.variants), seeds, params.recognizer.base)  # only the variants listed now
    histories = load_histories(RECOGNIZER_METRICS, cells)
    detector_names = list(params.detector.variants)
    detectors = load_detectors(DETECTOR_METRICS, detector_names)
    detector_histories = load_detector_histories(DETECTOR_METRICS, detector_names)
    summary = summarize(cells, histories, settings.rank_by, settings.baseline, detectors)
    add_detector_convergence(summary, detector_histories)
    if summary["detectors"] and summary["test_crops_from"] != "none":
        add_shelf(summary, shelf_per_cell(cells, RECOGNIZER_METRICS, PREPARED, CROPS))
    confusion = confusion_of(RECOGNIZER_METRICS, summary["best_variant"], summary["best_seed"], class_names(CROPS))
    summary["confusion"] = {key: confusion[key] for key in ("cell", "products", "pairs")}
    dataset_hash = next(iter(next(iter(cells.values())).values()))["dataset_hash"]
    read = {"evaluate": settings, "recognizer.seeds": seeds, "recognizer.variant_names": list(cells), "detector.variant_names": detector_names}
    with stage_run("evaluate", params.mlflow.experiment, read, dataset_hash):
        log = MlflowLogger()  # the run stage_run opened
        files = write_report(summary, cells, histories, detector_histories, confusion, REPORTS)
        write_json_atomic(SUMMARY_JSON, summary)
        write_text_atomic(SUMMARY_MD, render_summary(summary))
        for path in files:
            log.log_artifact(str(path), artifact_path="report")
        for path in (SUMMARY_JSON, SUMMARY_MD):
            log.log_artifact(str(path), artifact_path="summary")
        log.log_metrics(headline_metrics(summary))
        log.set_tags({"best_variant": summary["best_variant"]})
        print(f"best variant by {summary['rank_by']} (val): {summary['best_variant']}; report: {REPORT_MD}")


if __name__ == "__main__":
    main()

"""DVC stage `prepare`: write the dataset (synthetic by default) to data/prepared with its card."""

import argparse

from skulab.data.coco import absent_warning
from skulab.data.prepare import prepare
from skulab.errors import exit_on_user_error
from skulab.layout import PREPARED, import_report_file
from skulab.params import load_params
from skulab.tracking import MlflowLogger, log_dataset, stage_run


def print_import_changes(report: dict) -> None:
    """Say what the import changed beyond skipping bad items, so that a user does not miss it."""
    for note in report.get("notes", []):
        print(f"prepare: {note}")
    dropped = report.get("dropped_classes", {})
    if dropped:
        print(f"prepare: {len(dropped)} class(es) absent from train dropped from every split: {', '.join(dropped)} (see {import_report_file()})")
    warning = absent_warning(report.get("absent_from_split", {}))
    if warning:
        print(f"prepare: warning: {warning} (see {import_report_file()} and card.md)")


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "prepare"))
    with stage_run("prepare", params.mlflow.experiment, {"prepare": params.prepare}, dataset_hash=None):
        log = MlflowLogger()  # the run stage_run opened
        card, report = prepare(params.prepare, PREPARED)
        print_import_changes(report)
        log.set_tags({"dataset.hash": card["hash"], "dataset.name": card["name"], "dataset.task": card["task"]})
        log_dataset(card["hash"], context="prepare", name=card["name"])
        for split, counts in card["splits"].items():
            log.log_metrics({f"{split}_images": counts["images"], f"{split}_boxes": counts["boxes"]})
        log.log_metrics({f"skipped_{kind}": count for kind, count in report["counts"].items()})
        log.log_metric("skipped_items", len(report["skipped"]))
        for split, names in report.get("absent_from_split", {}).items():
            log.log_metric(f"{split}_classes_absent", len(names))
        for path in sorted(PREPARED.glob("*.*")):  # card, report and plots, not the images
            log.log_artifact(str(path), artifact_path="dataset")


if __name__ == "__main__":
    main()

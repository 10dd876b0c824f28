"""DVC stage `prepare`: write the dataset (synthetic by default) to data/prepared with its card."""

import argparse

import mlflow

from skulab.data.prepare import prepare
from skulab.errors import exit_on_user_error
from skulab.layout import PREPARED
from skulab.params import load_params
from skulab.tracking import stage_run


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "prepare"))
    with stage_run("prepare", params.mlflow.experiment, {"prepare": params.prepare}, dataset_hash=None):
        card = prepare(params.prepare, PREPARED)
        mlflow.set_tag("dataset.hash", card["hash"])
        for split, counts in card["splits"].items():
            mlflow.log_metrics({f"{split}_images": counts["images"], f"{split}_boxes": counts["boxes"]})
        for name in ("card.json", "card.md", "contact_sheet.png", "sku_gallery.png"):
            mlflow.log_artifact(str(PREPARED / name), artifact_path="dataset")


if __name__ == "__main__":
    main()

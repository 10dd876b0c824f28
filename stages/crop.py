"""DVC stage `crop`: cut products out of their boxes into data/crops with a manifest."""

import argparse

import mlflow

from skulab.crop import crop_dataset
from skulab.data.coco import load_card
from skulab.errors import exit_on_user_error
from skulab.layout import CROPS, PREPARED
from skulab.params import load_params
from skulab.tracking import stage_run


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "crop"))
    dataset_hash = load_card(PREPARED)["hash"]
    with stage_run("crop", params.mlflow.experiment, {"crop": params.crop}, dataset_hash):
        stats = crop_dataset(PREPARED, CROPS, params.crop, dataset_hash)
        for split in ("train", "val", "test"):
            mlflow.log_metrics({f"{split}_{key}": value for key, value in stats[split].items()})
        mlflow.log_artifact(str(CROPS / "manifest.csv"), artifact_path="crops")


if __name__ == "__main__":
    main()

"""DVC stage `train_detector@<name>`: train one detector of the grid (mmdetection) and detect on test."""

import argparse

from skulab.detection.cell import train_detector_cell
from skulab.errors import exit_on_user_error
from skulab.layout import PREPARED
from skulab.params import load_params


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="a key of detector.variants in params.yaml")
    parser.add_argument(
        "--stop-after-epochs", type=int, default=None, metavar="N",
        help="stop after N more epochs; the next run resumes from the last checkpoint",
    )
    args = parser.parse_args()
    params = load_params(sections=("mlflow", "detector"))
    train_detector_cell(params, args.name, PREPARED, stop_after_epochs=args.stop_after_epochs)


if __name__ == "__main__":
    main()

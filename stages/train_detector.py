"""DVC stage `train_detector@<name>`: train one detector of the grid (mmdetection) and detect on test.

With `world_size: N > 1` in the detector's params the script re-runs itself under torchrun on N
processes (`python -m torch.distributed.run --standalone --nproc_per_node=N`); mmengine's Runner
then trains with launcher 'pytorch'. The DVC command is the same for every world size.
"""

import argparse
import sys

from skulab.detection.cell import detector_world_size, train_detector_cell
from skulab.distributed import relaunch
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
    code = relaunch(detector_world_size(params, args.name))
    if code is not None:  # the torchrun processes trained the cell
        sys.exit(code)
    train_detector_cell(params, args.name, PREPARED, stop_after_epochs=args.stop_after_epochs)


if __name__ == "__main__":
    main()

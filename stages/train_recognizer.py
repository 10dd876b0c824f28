"""DVC stage `train_recognizer@<variant>-<seed>`: train one cell of the recognizer grid.

With `world_size: N > 1` in the cell's params the script re-runs itself under torchrun on N
processes (`python -m torch.distributed.run --standalone --nproc_per_node=N`), so the DVC command
is the same for every world size.
"""

import argparse
import sys

from skulab.distributed import relaunch
from skulab.errors import exit_on_user_error
from skulab.layout import CROPS
from skulab.params import load_params
from skulab.recognition.cell import cell_world_size, train_cell


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="a key of recognizer.variants in params.yaml")
    parser.add_argument("--seed", required=True, type=int, help="one of recognizer.seeds")
    parser.add_argument(
        "--stop-after-epochs", type=int, default=None, metavar="N",
        help="stop after N more epochs; the next run resumes from the last checkpoint",
    )
    args = parser.parse_args()
    params = load_params(sections=("mlflow", "recognizer"))
    code = relaunch(cell_world_size(params, args.variant, args.seed))
    if code is not None:  # the torchrun processes trained the cell
        sys.exit(code)
    train_cell(params, args.variant, args.seed, CROPS, stop_after_epochs=args.stop_after_epochs)


if __name__ == "__main__":
    main()

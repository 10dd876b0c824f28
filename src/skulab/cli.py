"""The `skulab` command: `check` validates params.yaml; `init-tracking` creates the MLflow store."""

import argparse

from skulab.errors import exit_on_user_error
from skulab.params import PARAMS_FILE, load_params


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skulab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate every section of params.yaml")
    check.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    init = commands.add_parser("init-tracking", help="create the MLflow store and experiment once")
    init.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "check":
        params = load_params(args.params)
        recognizer, detectors = params.recognizer, list(params.detector.variants)
        cells = len(recognizer.variants) * len(recognizer.seeds)
        print(
            f"{args.params}: ok ({len(detectors)} detectors: {', '.join(detectors)}; "
            f"{len(recognizer.variants)} recognizer variants x {len(recognizer.seeds)} seeds = {cells} cells)"
        )
    else:
        from skulab.tracking import ensure_experiment, tracking_uri

        params = load_params(args.params, sections=("mlflow",))
        experiment_id = ensure_experiment(params.mlflow.experiment)
        print(f"MLflow experiment '{params.mlflow.experiment}' (id {experiment_id}) at {tracking_uri()}")


if __name__ == "__main__":
    main()

"""The `skulab` command: `check` validates params.yaml; `init-tracking` creates the MLflow store;
`predict` runs the packaged model on images."""

import argparse
from pathlib import Path

from skulab.errors import SkulabError, exit_on_user_error
from skulab.io import read_json
from skulab.layout import CROPS
from skulab.params import PARAMS_FILE, Params, load_params


def check_schedules(params: Params, crops: Path, source: str) -> None:
    """Warm-up and milestones become iterations only with the train split's size, so they are
    checked once the crops exist (training refuses them the same way otherwise)."""
    import torch

    from skulab.recognition.losses import uses_metric_loss
    from skulab.recognition.schedules import create_schedule

    train_crops = read_json(crops / "stats.json")["train"]["crops"]
    for name in params.recognizer.variants:
        cfg = params.recognizer.resolve(name)
        iters = train_crops // cfg.batch_size  # drop_last batches; the PK sampler draws at least one
        if uses_metric_loss(cfg.loss):
            iters = max(iters, 1)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        try:
            create_schedule(optimizer, cfg, iters)
        except SkulabError as exc:
            detail = str(exc).removeprefix("recognizer: ")
            raise SkulabError(f"{source}: recognizer.variants.{name}: {detail} ({train_crops} train crops in {crops})") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skulab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate every section of params.yaml")
    check.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    init = commands.add_parser("init-tracking", help="create the MLflow store and experiment once")
    init.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    predict = commands.add_parser(
        "predict", help="products and counts per SKU on images, with the packaged model",
        description="Run the packaged shelf model (dvc stage `package`) on images: one JSON line per image with its "
        "products (box [x, y, w, h], detector_score, sku, confidence, similarity, alternatives) and counts per SKU. "
        "A bad file is named on stderr and the others go on; the exit code is 1 if any file failed.",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them")
    predict.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model folder "
                         "(default: models:/<package.model_name>@<package.alias> from params.yaml, i.e. models:/skulab-shelf@champion)")
    predict.add_argument("--out", default="-", help="results as JSON lines (default: stdout)")
    predict.add_argument("--draw", default=None, metavar="OUT_DIR", help="also write each image with its labelled boxes as PNG here")
    predict.add_argument("--chunk", type=int, default=8, help="images predicted together, their crops batched through the recognizer (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "predict":
        from skulab.serving.predict import run

        if args.chunk < 1:
            parser.error("--chunk must be >= 1")
        raise SystemExit(run(args.inputs, args.model, args.out, args.draw, args.chunk))
    if args.command == "check":
        params = load_params(args.params)
        crops = Path(args.params).parent / CROPS
        if (crops / "stats.json").is_file():
            check_schedules(params, crops, args.params)
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

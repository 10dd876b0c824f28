"""One cell of the recognizer grid: resolve its config, open (or reopen) its MLflow run, train.

With world_size > 1 every rank runs train_cell under torchrun (the stage script starts it):
each joins the process group, rank 0 alone opens the MLflow run and writes the cell's files. The
training code logs through the skulab.tracking.RunLogger it is handed: the run's MlflowLogger on
rank 0, a NullLogger on the others.
"""

import json
from pathlib import Path

from skulab.distributed import process_group
from skulab.errors import SkulabError
from skulab.io import write_json_atomic
from skulab.layout import RECOGNIZER_METRICS, RECOGNIZER_MODELS, recognizer_cell
from skulab.params import Params
from skulab.recognition.train import CellTrainer, resolve_device
from skulab.tracking import MlflowLogger, NullLogger, existing_run, stage_run


def cell_world_size(params: Params, variant: str, seed: int) -> int:
    """The processes the cell trains on (after checking the cell exists)."""
    recognizer = params.recognizer
    if variant not in recognizer.variants:
        raise SkulabError(f"--variant: unknown variant '{variant}'; params.yaml defines: {', '.join(recognizer.variants)}")
    if seed not in recognizer.seeds:
        raise SkulabError(f"--seed: {seed} is not in recognizer.seeds {recognizer.seeds}")
    return recognizer.resolve(variant).world_size


def train_cell(params: Params, variant: str, seed: int, crops: Path, stop_after_epochs: int | None = None) -> dict | None:
    """Train the cell; its final metrics (None when stopped early, and on every rank but 0)."""
    recognizer = params.recognizer
    world_size = cell_world_size(params, variant, seed)
    try:
        crop_stats = json.loads((crops / "stats.json").read_text())
    except FileNotFoundError:
        raise SkulabError(f"{crops / 'stats.json'}: missing; run the crop stage first") from None
    dataset_hash = crop_stats["dataset_hash"]
    config = recognizer.resolve(variant)
    cell = recognizer_cell(variant, seed)
    stage = f"train_recognizer@{cell}"
    with process_group(world_size, resolve_device(config.device).type) as ranks:
        trainer = CellTrainer(config, seed, crops, RECOGNIZER_MODELS / cell, RECOGNIZER_METRICS / cell, ranks=ranks)
        checkpoint = trainer.resumable()
        if not ranks.main:  # trains its share; rank 0 owns the MLflow run and the files
            return trainer.fit(None, checkpoint, stop_after_epochs, logger=NullLogger())
        logged = {"variant": variant, "seed": seed, **config.model_dump(mode="json")}
        resumed_run = existing_run(checkpoint["run_id"]) if checkpoint else None
        with stage_run(stage, params.mlflow.experiment, logged, dataset_hash, run_id=resumed_run) as run:
            run_id = run.info.run_id
            write_json_atomic(
                RECOGNIZER_METRICS / cell / "cell.json",
                {
                    "stage": stage,
                    "variant": variant,
                    "seed": seed,
                    "overrides": recognizer.variants[variant] or {},
                    "run_id": run_id,
                    "dataset_hash": dataset_hash,
                    "test_detector": crop_stats["test_detector"],
                },
            )
            return trainer.fit(run_id, checkpoint, stop_after_epochs, logger=MlflowLogger())

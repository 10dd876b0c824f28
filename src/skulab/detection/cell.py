"""One cell of the detector grid: resolve its config, open (or reopen) its MLflow run, train, test.

With world_size > 1 every rank runs this under torchrun (the stage script starts it): rank 0
prepares the work dir and owns the MLflow run; the others wait for it, then train and test with it.
The training code logs through the skulab.tracking.RunLogger it is handed: the run's MlflowLogger
on rank 0, a NullLogger on the others.
"""

from pathlib import Path

import torch

from skulab.data.coco import load_card
from skulab.detection.train import DetectorCell
from skulab.distributed import process_group
from skulab.errors import SkulabError
from skulab.layout import DETECTIONS, DETECTOR_METRICS, DETECTOR_MODELS
from skulab.params import Params
from skulab.tracking import MlflowLogger, NullLogger, existing_run, repo_root, stage_run


def detector_world_size(params: Params, name: str) -> int:
    """The processes the cell trains on (after checking the detector exists)."""
    if name not in params.detector.variants:
        raise SkulabError(f"--name: unknown detector '{name}'; params.yaml defines: {', '.join(params.detector.variants)}")
    return params.detector.resolve(name).world_size


def train_detector_cell(params: Params, name: str, prepared: Path, stop_after_epochs: int | None = None) -> dict | None:
    """Train and test the cell; its final metrics (None when stopped early)."""
    detector = params.detector
    world_size = detector_world_size(params, name)
    config = detector.resolve(name)
    dataset_hash = load_card(prepared)["hash"]
    cell = DetectorCell(name, config, repo_root(), prepared, DETECTOR_MODELS / name, DETECTOR_METRICS / name, DETECTIONS / name, dataset_hash)
    with process_group(world_size, "cuda" if torch.cuda.is_available() else "cpu") as ranks:  # mmengine's device choice
        state = cell.resumable()
        ranks.barrier()  # every rank has read the state before rank 0 may empty the work dir
        cfg = cell.prepare_work_dir(resume=state is not None) if ranks.main else None
        ranks.barrier()
        if not ranks.main:
            return cell.fit(cell.prepare_work_dir(resume=state is not None), None, state, stop_after_epochs, logger=NullLogger())
        logged = {"detector": name, **config.model_dump(mode="json")}
        resumed_run = existing_run(state["run_id"]) if state else None
        with stage_run(f"train_detector@{name}", params.mlflow.experiment, logged, dataset_hash, run_id=resumed_run) as run:
            return cell.fit(cfg, run.info.run_id, state, stop_after_epochs, logger=MlflowLogger())

"""One cell of the detector grid: resolve its config, open (or reopen) its MLflow run, train, test."""

from pathlib import Path

from skulab.data.coco import load_card
from skulab.detection.train import DetectorCell
from skulab.errors import SkulabError
from skulab.layout import DETECTIONS, DETECTOR_METRICS, DETECTOR_MODELS
from skulab.params import Params
from skulab.tracking import existing_run, repo_root, stage_run


def train_detector_cell(params: Params, name: str, prepared: Path, stop_after_epochs: int | None = None) -> dict | None:
    detector = params.detector
    if name not in detector.variants:
        raise SkulabError(f"--name: unknown detector '{name}'; params.yaml defines: {', '.join(detector.variants)}")
    config = detector.resolve(name)
    dataset_hash = load_card(prepared)["hash"]
    cell = DetectorCell(name, config, repo_root(), prepared, DETECTOR_MODELS / name, DETECTOR_METRICS / name, DETECTIONS / name, dataset_hash)
    state = cell.resumable()
    cfg = cell.prepare_work_dir(resume=state is not None)
    logged = {"detector": name, **config.model_dump(mode="json")}
    resumed_run = existing_run(state["run_id"]) if state else None
    with stage_run(f"train_detector@{name}", params.mlflow.experiment, logged, dataset_hash, run_id=resumed_run) as run:
        return cell.fit(cfg, run.info.run_id, state, stop_after_epochs)

"""The detector stage: configs from params, a tiny training run with MLflow, resume, and IoU matching."""

import contextlib
import io
import json
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mmengine.hooks import CheckpointHook

from conftest import REPO, TINY, deep_merge, repo_params, write_params
from skulab.detection.config import build_config
from skulab.detection.metric import ZeroIfEmptyCocoMetric
from skulab.data.coco import detector_annotations
from skulab.detection.train import DetectorCell
from skulab.errors import SkulabError
from skulab.io import read_json
from skulab.matching import iou_matrix, match
from skulab.params import DetectorConfig, load_params
from skulab.tracking import MlflowLogger, RecordingLogger


def detector_config(**overrides) -> DetectorConfig:
    base = deep_merge(repo_params()["detector"]["base"], TINY["detector"]["base"])
    return DetectorConfig.model_validate({**base, "config": "configs/detectors/faster_rcnn.py", **overrides}, context={"root": REPO})


# --- IoU matching (hand-made boxes) ---------------------------------------------------------------


def test_iou_of_hand_made_boxes():
    boxes = [[0, 0, 10, 10]]
    others = [[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 20, 20], [2, 2, 0, 0]]
    assert iou_matrix(boxes, others)[0] == pytest.approx([1.0, 50 / 150, 0.0, 100 / 400, 0.0])


def test_match_takes_the_class_of_the_best_overlap_and_each_truth_once():
    truths = np.array([[0, 0, 10, 10], [100, 0, 10, 10]])
    detections = np.array(
        [
            [1, 0, 10, 10],    # IoU 0.818 with truth 0
            [0, 0, 10, 10],    # IoU 1.0 with truth 0, higher score: takes it first
            [100, 0, 10, 4],   # IoU 0.4 with truth 1: below 0.5, background
            [300, 0, 10, 10],  # overlaps nothing
        ]
    )
    matched, ious = match(detections, np.array([0.8, 0.9, 0.7, 0.95]), truths, 0.5)
    assert matched.tolist() == [-1, 0, -1, -1]  # the lower-scored duplicate of truth 0 is background
    assert ious == pytest.approx([9 / 11, 1.0, 0.4, 0.0])
    matched, _ = match(detections, np.array([0.8, 0.9, 0.7, 0.95]), truths, 0.4)
    assert matched.tolist() == [-1, 0, 1, -1]


def test_match_prefers_higher_scores_when_two_detections_compete():
    truths = np.array([[0, 0, 10, 10]])
    detections = np.array([[0, 0, 10, 10], [1, 1, 10, 10]])
    assert match(detections, np.array([0.2, 0.9]), truths, 0.5)[0].tolist() == [-1, 0]


def test_match_with_no_detections_or_no_truths():
    matched, ious = match(np.zeros((0, 4)), np.zeros(0), np.array([[0, 0, 5, 5]]), 0.5)
    assert matched.shape == (0,) and ious.shape == (0,)
    matched, ious = match(np.array([[0, 0, 5, 5]]), np.array([0.9]), np.zeros((0, 4)), 0.5)
    assert matched.tolist() == [-1] and ious.tolist() == [0.0]


# --- params -> mmdet config ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["faster_rcnn", "cascade_rcnn", "retinanet", "fcos", "atss"])
def test_every_default_config_builds_offline_with_the_params_knobs(name, tiny_prepared, tmp_path):
    config = detector_config(config=f"configs/detectors/{name}.py", fpn_channels=48)
    annotations, classes = detector_annotations(tiny_prepared, tmp_path / "ann", class_aware=False)
    cfg = build_config(config, REPO, tiny_prepared, annotations, classes, tmp_path / "work", tmp_path / "det" / "test")
    model = cfg.model
    assert model.backbone.depth == 18 and model.backbone.init_cfg is None  # nothing downloads
    assert model.neck.in_channels == [64, 128, 256, 512] and model.neck.out_channels == 48
    assert cfg.train_cfg.max_epochs == config.epochs
    assert cfg.train_dataloader.dataset.metainfo["classes"] == ("product",)
    assert cfg.test_evaluator.outfile_prefix.endswith("det/test")
    assert not any(b["type"] == "MLflowVisBackend" for b in cfg.visualizer.vis_backends)
    if "roi_head" in model:
        heads = model.roi_head.bbox_head if isinstance(model.roi_head.bbox_head, list) else [model.roi_head.bbox_head]
        assert {(h.in_channels, h.fc_out_channels, h.num_classes) for h in heads} == {(48, 32, 1)}
        assert model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
        assert model.train_cfg.rpn_proposal.max_per_img == 50 and model.train_cfg.rpn_proposal.nms_pre == 200
        assert model.test_cfg.rpn.max_per_img == config.max_per_img == 300  # test time: raised to max_per_img (test_dense.py)
        rcnn = model.train_cfg.rcnn if isinstance(model.train_cfg.rcnn, list) else [model.train_cfg.rcnn]
        assert {stage.sampler.num for stage in rcnn} == {32}
    else:
        assert model.bbox_head.in_channels == 48 and model.bbox_head.num_classes == 1


def test_class_aware_detection_uses_every_sku(tiny_prepared, tmp_path):
    annotations, classes = detector_annotations(tiny_prepared, tmp_path / "ann", class_aware=True)
    assert len(classes) == 6 and "product" not in classes
    coco = read_json(annotations["val"])
    assert {c["name"] for c in coco["categories"]} == set(classes)
    cfg = build_config(detector_config(class_aware=True), REPO, tiny_prepared, annotations, classes, tmp_path / "w", tmp_path / "d")
    assert cfg.model.roi_head.bbox_head.num_classes == 6


def test_bad_detector_params_name_the_key(tiny_params_dict, tmp_path):
    data = deep_merge(tiny_params_dict, {"detector": {"variants": {"yolo": {"config": "configs/detectors/yolo.py"}}}})
    with pytest.raises(SkulabError, match=r"detector\.variants\.yolo\.config: config file 'configs/detectors/yolo\.py' not found"):
        load_params(write_params(tmp_path / "params.yaml", data))
    data = deep_merge(tiny_params_dict, {"detector": {"variants": {"frcnn": {}}}})
    with pytest.raises(SkulabError, match=r"detector\.variants\.frcnn\.config: missing key"):
        load_params(write_params(tmp_path / "params.yaml", data))
    data = deep_merge(tiny_params_dict, {"crop": {"detector": "yolo"}})
    with pytest.raises(SkulabError, match=r"crop\.detector: unknown detector 'yolo'; allowed: best, none, faster_rcnn"):
        load_params(write_params(tmp_path / "params.yaml", data))


def test_unknown_detector_type_is_one_clear_error(tiny_prepared, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "mystery.py").write_text("_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\nmodel = dict(type='MysteryRCNN', backbone=dict(depth=18))\n")
    config = DetectorConfig.model_validate({**detector_config().model_dump(), "config": "configs/mystery.py"}, context={"root": repo})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cell = DetectorCell("mystery", config, repo, tiny_prepared, tmp_path / "m", tmp_path / "metrics", tmp_path / "d", "hash")
    cfg = cell.prepare_work_dir(resume=False)
    with pytest.raises(SkulabError, match=r"configs/mystery\.py: .*MysteryRCNN"):
        cell.fit(cfg, "run", None)


def test_a_split_without_boxes_is_an_error(tiny_prepared, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared / "annotations", prepared / "annotations")
    coco = read_json(prepared / "annotations" / "val.json")
    (prepared / "annotations" / "val.json").write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(SkulabError, match=r"val\.json: split 'val' has no boxes"):
        detector_annotations(prepared, tmp_path / "ann", class_aware=False)


# --- a tiny training run --------------------------------------------------------------------------


class RecordingMlflowLogger(RecordingLogger):
    """Logs to the active MLflow run, as the stage's logger does, and keeps every call."""

    def __init__(self):
        super().__init__()
        self.mlflow = MlflowLogger()

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self.mlflow.log_metrics(metrics, step)

    def log_metric(self, key, value, step=None):
        super().log_metric(key, value, step)
        self.mlflow.log_metric(key, value, step)

    def log_artifact(self, path, artifact_path=None):
        super().log_artifact(path, artifact_path)
        self.mlflow.log_artifact(path, artifact_path)


def _train(tiny_prepared, root, stop_after=None, logger=None):
    """One detector cell under `root`, as the stage runs it (state, run id and resume included)."""
    cell = DetectorCell("faster_rcnn", detector_config(), REPO, tiny_prepared, root / "model", root / "metrics", root / "detections", "hash")
    state = cell.resumable()
    cfg = cell.prepare_work_dir(resume=state is not None)
    run_id = state["run_id"] if state else None
    with mlflow.start_run(run_id=run_id) as run:
        return cell.fit(cfg, run.info.run_id, state, stop_after, logger=logger or MlflowLogger()), cell


@pytest.fixture(scope="module")
def trained(tiny_prepared, tmp_path_factory):
    """An uninterrupted run and one stopped after epoch 1 then resumed, in one MLflow store."""
    root = tmp_path_factory.mktemp("detector")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        out, err = io.StringIO(), io.StringIO()
        logger = RecordingMlflowLogger()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # what a terminal would show
            full, _ = _train(tiny_prepared, root / "full", logger=logger)
        stopped, cell = _train(tiny_prepared, root / "split", stop_after=1)
        interrupted = {"stopped": stopped, "state": read_json(cell.state_path), "files": sorted(p.name for p in cell.model_dir.iterdir())}
        resumed, _ = _train(tiny_prepared, root / "split")
        yield {"root": root, "full": full, "resumed": resumed, "interrupted": interrupted, "uri": uri, "terminal": (out.getvalue(), err.getvalue()), "logged": logger.calls}


def test_training_writes_checkpoints_metrics_and_detections(trained):
    root, final = trained["root"] / "full", trained["full"]
    assert {"val_bbox_mAP", "test_bbox_mAP", "test_bbox_mAP_50", "test_bbox_mAP_75", "test_bbox_AR_100", "best_epoch"} <= set(final)
    assert all(0 <= final[k] <= 1 for k in ("val_bbox_mAP", "test_bbox_mAP", "test_bbox_AR_100"))
    assert read_json(root / "metrics" / "final.json") == final
    history = (root / "metrics" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,train_loss") and "val_bbox_mAP" in history[0] and len(history) == 3
    assert (root / "metrics" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    best = torch.load(root / "model" / "best.pth", weights_only=True)
    assert "optimizer" not in best and any(k.startswith("backbone.") for k in best["state_dict"])
    assert "optimizer" in torch.load(root / "model" / "last.pth", weights_only=False)
    assert "MysteryRCNN" not in (root / "model" / "config.py").read_text()
    detections = read_json(root / "detections" / "test.bbox.json")
    assert detections and {"image_id", "bbox", "score", "category_id"} <= set(detections[0])


def test_val_detections_come_from_the_best_checkpoint(trained, tiny_prepared):
    """val.bbox.json (for crop.score_threshold: auto): val images only, and it scores the best epoch's val mAP."""
    from mmdet.datasets.api_wrappers import COCO
    from pycocotools.cocoeval import COCOeval

    root, final = trained["root"] / "full", trained["full"]
    val_ids = {image["id"] for image in read_json(tiny_prepared / "annotations" / "val.json")["images"]}
    detections = read_json(root / "detections" / "val.bbox.json")
    assert detections and {d["image_id"] for d in detections} <= val_ids
    assert all(set(d) == {"image_id", "bbox", "score", "category_id"} and len(d["bbox"]) == 4 for d in detections)
    # The same COCO evaluation as mmdet's CocoMetric (maxDets 100/300/1000, 3 decimals) gives the best epoch's val mAP.
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(root / "model" / "annotations" / "val.json"))
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.params.maxDets = [100, 300, 1000]
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert round(evaluation.stats[0], 3) == pytest.approx(final["val_bbox_mAP"], abs=1e-9)
    client = mlflow.MlflowClient(trained["uri"])
    assert {a.path for a in client.list_artifacts(final["run_id"], "detections")} == {"detections/test.bbox.json", "detections/val.bbox.json"}


def test_a_cell_prints_progress_and_leaves_mmengine_dumps_in_its_log(trained):
    """The terminal: the log file's path, a bar and a metrics line per epoch, the test scores; not 500+ lines of dumps."""
    out, err = trained["terminal"]
    logs = list((trained["root"] / "full" / "model").glob("*/*.log"))
    assert len(logs) == 1
    log = logs[0].read_text()
    dumps = ("System environment:", "Runtime environment:", "Config:", "Hooks will be executed", "Epoch(train)", "loading annotations", "Average Precision")
    for text in dumps:
        assert text in log, text
        assert text not in out and text not in err, text
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert lines[0].startswith("train_detector@faster_rcnn: mmengine's log") and lines[0].endswith(str(logs[0]))
    assert [line.split(":")[0] for line in lines[1:3]] == ["faster_rcnn epoch 1/2", "faster_rcnn epoch 2/2"]
    assert f"val mAP {trained['full']['val_bbox_mAP']:.3f}" in "".join(lines[1:3]) and "test mAP" in lines[3]
    assert "faster_rcnn epoch 1/2:" in err and "batch" in err  # tqdm's bar (stderr), cleared when the epoch ends
    others = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "epoch" not in line]
    assert not [line for line in others if "INFO mlflow." not in line], err  # MLflow creating its store is not the cell's


def test_training_logs_to_the_stage_run(trained):
    client = mlflow.MlflowClient(trained["uri"])
    final = trained["full"]
    assert [m.step for m in client.get_metric_history(final["run_id"], "val_bbox_mAP")] == [1, 2]
    run = client.get_run(final["run_id"])
    assert run.data.metrics["test_bbox_mAP"] == pytest.approx(final["test_bbox_mAP"])
    assert "train_loss" in run.data.metrics and "lr" in run.data.metrics
    assert not any(key.startswith("model.") for key in run.data.params)  # no config dump as params
    artifacts = {a.path for a in client.list_artifacts(final["run_id"], "checkpoints")}
    assert artifacts == {"checkpoints/best.pth", "checkpoints/last.pth"}


def test_training_hands_its_logger_epochs_test_metrics_and_files(trained):
    """What the training code logged, in order: each epoch's row at its step, the test metrics and best epoch, the files."""
    root, final, calls = trained["root"] / "full", trained["full"], trained["logged"]
    assert [call[0] for call in calls] == ["metrics"] * 4 + ["artifact"] * 8
    history = (root / "metrics" / "history.csv").read_text().splitlines()
    assert [step for _, _, step in calls[:2]] == [1, 2] and all(list(metrics) == history[0].split(",")[1:] for _, metrics, _ in calls[:2])
    assert calls[2] == ("metrics", {k: v for k, v in final.items() if k.startswith("test_")}, None)
    assert calls[3] == ("metrics", {"best_epoch": final["best_epoch"]}, None)
    artifacts = [(at, path.rsplit("/", 1)[1]) for _, path, at in calls[4:]]
    assert artifacts == [
        ("metrics", "final.json"), ("metrics", "history.csv"), ("metrics", "curves.png"), ("config", "config.py"),
        ("detections", "test.bbox.json"), ("detections", "val.bbox.json"), ("checkpoints", "best.pth"), ("checkpoints", "last.pth"),
    ]


def test_an_interrupted_run_resumes_in_the_same_mlflow_run(trained):
    interrupted, resumed, full = trained["interrupted"], trained["resumed"], trained["full"]
    assert interrupted["stopped"] is None
    assert not interrupted["state"]["finished"] and len(interrupted["state"]["history"]) == 1
    assert "last_checkpoint" in interrupted["files"] and "epoch_1.pth" in interrupted["files"]
    assert resumed["run_id"] == interrupted["state"]["run_id"]
    client = mlflow.MlflowClient(trained["uri"])
    assert [m.step for m in client.get_metric_history(resumed["run_id"], "val_bbox_mAP")] == [1, 2]
    # RNG states travel in the checkpoint: the resumed run ends where the uninterrupted one did.
    scores = lambda final: {k: v for k, v in final.items() if k.startswith(("val_", "test_"))}  # noqa: E731
    assert scores(resumed) == scores(full)


def test_a_resumed_run_writes_the_uninterrupted_runs_history_file(trained):
    """Same columns in the same order (state.json's JSON sorts each row's keys), so the same curves.png."""
    history = lambda name: (trained["root"] / name / "metrics" / "history.csv").read_text().splitlines()  # noqa: E731
    full, resumed = history("full"), history("split")
    assert full[0] == resumed[0]
    untimed = lambda lines: [[v for k, v in zip(lines[0].split(","), line.split(",")) if "seconds" not in k] for line in lines[1:]]  # noqa: E731
    assert untimed(full) == untimed(resumed)


class Interrupted(Exception):
    """A crash simulated inside validation."""


def _raise_once_in_validation(monkeypatch, where: str) -> None:
    """Crash the first validation (epoch 1's), after mmengine saved epoch_1.pth and last_checkpoint.

    'metric': while computing the val mAP, before any after_val_epoch hook. 'hook': in an
    after_val_epoch hook that runs after CheckpointHook saved the best checkpoint and re-saved
    epoch_1.pth, before the stage's tracking hook wrote epoch 1's history row.
    """
    calls = []
    if where == "metric":
        compute = ZeroIfEmptyCocoMetric.compute_metrics

        def compute_metrics(self, results):
            calls.append(1)
            if len(calls) == 1:
                raise Interrupted
            return compute(self, results)

        monkeypatch.setattr(ZeroIfEmptyCocoMetric, "compute_metrics", compute_metrics)
    else:
        after_val_epoch = CheckpointHook.after_val_epoch

        def interrupted_after_val_epoch(self, runner, metrics):
            after_val_epoch(self, runner, metrics)
            calls.append(1)
            if len(calls) == 1:
                raise Interrupted

        monkeypatch.setattr(CheckpointHook, "after_val_epoch", interrupted_after_val_epoch)


@pytest.mark.parametrize("where", ["metric", "hook"])
def test_an_interruption_inside_validation_validates_that_epoch_on_resume(trained, tiny_prepared, monkeypatch, where):
    root = trained["root"] / f"crash-in-val-{where}"
    _raise_once_in_validation(monkeypatch, where)
    with pytest.raises(Interrupted):
        _train(tiny_prepared, root)
    model = root / "model"
    assert read_json(model / "state.json")["history"] == []  # epoch 1 has no row...
    assert (model / "last_checkpoint").read_text().strip().endswith("epoch_1.pth")  # ...but a checkpoint to resume
    resumed, cell = _train(tiny_prepared, root)
    history = read_json(cell.state_path)["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    # Epoch 1 competed for best.pth and the run ends where the uninterrupted one did, train losses
    # included (validation does not move the training RNG, before or after the checkpoint is written).
    full_history = read_json(trained["root"] / "full" / "model" / "state.json")["history"]
    untimed = lambda rows: [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]  # noqa: E731
    assert untimed(history) == untimed(full_history)
    scores = lambda final: {k: v for k, v in final.items() if k.startswith(("val_", "test_")) or k == "best_epoch"}  # noqa: E731
    assert scores(resumed) == scores(trained["full"])
    assert sorted(p.name for p in model.glob("*.pth")) == ["best.pth", "last.pth"]
    client = mlflow.MlflowClient(trained["uri"])
    assert [m.step for m in client.get_metric_history(resumed["run_id"], "val_bbox_mAP")] == [1, 2]


def test_a_finished_or_changed_cell_starts_over(trained, tiny_prepared):
    root = trained["root"] / "full"
    same = DetectorCell("faster_rcnn", detector_config(), REPO, tiny_prepared, root / "model", root / "metrics", root / "detections", "hash")
    assert same.resumable() is None  # finished
    changed = DetectorCell("faster_rcnn", detector_config(lr=0.001), REPO, tiny_prepared, root / "model", root / "metrics", root / "detections", "hash")
    assert changed.fingerprint != same.fingerprint


def test_stage_cli_rejects_an_unknown_detector_in_one_line():
    result = subprocess.run(
        [sys.executable, "stages/train_detector.py", "--name", "yolo9000"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --name: unknown detector 'yolo9000'; params.yaml defines: faster_rcnn")
    assert "Traceback" not in result.stderr

"""Recognizer cell training: reproducible, resumable, honest about metric-only heads."""

import json

import mlflow
import pytest
import torch

from conftest import config
from skulab.recognition.train import CellTrainer
from skulab.tracking import MlflowLogger, RecordingLogger


@pytest.fixture(autouse=True)
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _fit(cfg, crops, out, seed=0, checkpoint_from=None, stop_after=None):
    trainer = CellTrainer(cfg, seed, crops, out / "model", out / "metrics")
    checkpoint = trainer.resumable() if checkpoint_from else None
    with mlflow.start_run() as run:
        return trainer.fit(run.info.run_id, checkpoint, stop_after, logger=MlflowLogger()), trainer


def _scores(final):
    return {k: v for k, v in final.items() if k not in ("run_id", "train_seconds")}


def test_same_seed_gives_identical_metrics(tiny_params, tiny_crops, tmp_path):
    cfg = config(tiny_params)
    first, _ = _fit(cfg, tiny_crops, tmp_path / "a")
    second, _ = _fit(cfg, tiny_crops, tmp_path / "b")
    other_seed, _ = _fit(cfg, tiny_crops, tmp_path / "c", seed=1)
    assert _scores(first) == _scores(second)
    assert _scores(first) != _scores(other_seed)
    assert {"test_top1", "test_proto_acc", "test_precision_at_1", "test_map_at_r", "best_epoch"} <= set(first)


def test_outputs_and_mlflow_logging(tiny_params, tiny_crops, tmp_path):
    final, trainer = _fit(config(tiny_params), tiny_crops, tmp_path)
    metrics = tmp_path / "metrics"
    assert json.loads((metrics / "final.json").read_text()) == final
    assert (metrics / "curves.png").read_bytes()[:4] == b"\x89PNG"
    history = (metrics / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,train_loss") and len(history) == 1 + 3
    per_class = json.loads((metrics / "per_class.json").read_text())["test_accuracy"]
    assert set(per_class) <= set(json.loads((tiny_crops / "classes.json").read_text()).values())
    run = mlflow.get_run(final["run_id"])
    assert run.data.metrics["test_top1"] == pytest.approx(final["test_top1"])
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(final["run_id"], "val_top1")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(final["run_id"], "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}


def test_the_cell_logs_epochs_test_metrics_and_files_to_its_logger(tiny_params, tiny_crops, tmp_path):
    """What the training code hands its run logger (no MLflow run open): each epoch's row at its
    step, then the test metrics and best epoch, then the metrics files and the checkpoints."""
    logger = RecordingLogger()
    trainer = CellTrainer(config(tiny_params), 0, tiny_crops, tmp_path / "model", tmp_path / "metrics")
    final = trainer.fit("run-id", logger=logger)
    assert final["run_id"] == "run-id" and mlflow.active_run() is None
    epochs = [call for call in logger.calls if call[0] == "metrics" and call[2] is not None]
    assert [step for _, _, step in epochs] == [1, 2, 3]
    history = (tmp_path / "metrics" / "history.csv").read_text().splitlines()
    assert all(list(metrics) == history[0].split(",")[1:] for _, metrics, _ in epochs)  # every column but epoch
    assert logger.metrics() == {**{k: v for k, v in final.items() if k.startswith("test_")}, "best_epoch": final["best_epoch"]}
    assert [call[0] for call in logger.calls] == ["metrics"] * 5 + ["artifact"] * 7
    assert logger.calls[3] == ("metrics", {k: v for k, v in final.items() if k.startswith("test_")}, None)
    assert logger.calls[4] == ("metrics", {"best_epoch": final["best_epoch"]}, None)
    assert logger.artifacts("metrics") == ["final.json", "per_class.json", "history.csv", "curves.png", "test_predictions.csv"]
    assert logger.artifacts("checkpoints") == ["best.pt", "last.pt"]
    assert all(path.startswith(str(tmp_path)) for kind, path, _ in logger.calls if kind == "artifact")


@pytest.mark.parametrize("optimizer", ["ranger", "radam_lookahead"])
def test_interrupted_run_resumes_to_the_same_result(tiny_params, tiny_crops, tmp_path, optimizer):
    """Stopped mid Lookahead cycle, with PK batches: the slow weights and sampler state must travel in last.pt."""
    cfg = config(tiny_params, optimizer=optimizer, schedule="warmup_cosine", lookahead_k=3, epochs=2, loss={"ce": 1.0, "triplet": 1.0})
    uninterrupted, _ = _fit(cfg, tiny_crops, tmp_path / "full")
    stopped, trainer = _fit(cfg, tiny_crops, tmp_path / "split", stop_after=1)
    assert stopped is None
    saved = torch.load(trainer.last_path, weights_only=False)["optimizer"]
    if optimizer == "radam_lookahead":  # pytorch_optimizer's Lookahead: slow weights beside the base optimizer's state
        states, slow_key, since_sync = saved["lookahead_state"], "slow_params", saved["base_optimizer"]["param_groups"][0]["counter"]
    else:  # Ranger: in each parameter's state
        states, slow_key, since_sync = saved["state"], "slow_buffer", saved["param_groups"][0]["step"] % 3
    assert since_sync != 0, "stopped on a Lookahead sync: the slow weights would equal the model's"
    assert states and all(slow_key in state for state in states.values())
    resumed, _ = _fit(cfg, tiny_crops, tmp_path / "split", checkpoint_from=True)
    assert _scores(resumed) == _scores(uninterrupted)
    full_weights = torch.load(tmp_path / "full" / "model" / "last.pt", weights_only=False)["model"]
    split_weights = torch.load(tmp_path / "split" / "model" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(full_weights[key], split_weights[key]) for key in full_weights)


def test_checkpoint_of_another_config_is_not_resumed(tiny_params, tiny_crops, tmp_path):
    _fit(config(tiny_params), tiny_crops, tmp_path, stop_after=1)
    changed = CellTrainer(config(tiny_params, lr=0.01), 0, tiny_crops, tmp_path / "model", tmp_path / "metrics")
    assert changed.resumable() is None
    same = CellTrainer(config(tiny_params), 0, tiny_crops, tmp_path / "model", tmp_path / "metrics")
    assert same.resumable()["epoch"] == 1


def test_finished_run_is_trained_again_not_resumed(tiny_params, tiny_crops, tmp_path):
    """DVC deletes a cell's metric files before rerunning it; a finished checkpoint must not be reused."""
    first, trainer = _fit(config(tiny_params), tiny_crops, tmp_path)
    assert trainer.resumable() is None
    for path in (tmp_path / "metrics").iterdir():
        path.unlink()
    second, _ = _fit(config(tiny_params), tiny_crops, tmp_path, checkpoint_from=True)
    assert _scores(second) == _scores(first)
    assert (tmp_path / "metrics" / "history.csv").is_file()


def test_metric_only_head_reports_prototype_accuracy(tiny_params, tiny_crops, tmp_path):
    final, trainer = _fit(config(tiny_params, loss={"multi_similarity": 1.0}), tiny_crops, tmp_path)
    assert trainer.selection_metric() == "val_proto_acc"
    assert "test_top1" not in final
    assert 0 <= final["test_proto_acc"] <= 1 and 0 <= final["test_map_at_r"] <= 1

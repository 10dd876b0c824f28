"""MLflow wiring: the experiment opens on its runs in `mlflow ui`, and runs name the data they read."""

import json

import mlflow
import pytest
from mlflow import MlflowClient

from skulab import tracking
from skulab.tracking import EXPERIMENT_KIND, ensure_experiment, stage_run

HASH = "0123456789abcdef" * 4  # a sha256 hex digest, as hash_files gives


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """An empty repo root with its own MLflow store."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path


def _client() -> MlflowClient:
    return MlflowClient(tracking.tracking_uri())


def test_a_new_experiment_is_marked_as_model_training(repo):
    experiment = _client().get_experiment(ensure_experiment("skulab"))
    assert experiment.tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_an_existing_experiment_without_the_kind_gets_it(repo):
    mlflow.set_tracking_uri(tracking.tracking_uri())
    experiment_id = mlflow.create_experiment("older", artifact_location=(repo / "mlartifacts").as_uri())
    assert EXPERIMENT_KIND[0] not in _client().get_experiment(experiment_id).tags
    assert ensure_experiment("older") == experiment_id
    assert _client().get_experiment(experiment_id).tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_a_kind_set_by_the_user_is_left_alone(repo):
    mlflow.set_tracking_uri(tracking.tracking_uri())
    experiment_id = mlflow.create_experiment("mine", tags={EXPERIMENT_KIND[0]: "genai_development"})
    ensure_experiment("mine")
    assert _client().get_experiment(experiment_id).tags[EXPERIMENT_KIND[0]] == "genai_development"


def _inputs(run_id: str) -> list:
    return _client().get_run(run_id).inputs.dataset_inputs


def test_a_stage_run_that_reads_the_dataset_logs_it_as_an_input(repo):
    (repo / "data/prepared").mkdir(parents=True)
    (repo / "data/prepared/card.json").write_text(json.dumps({"name": "synthetic(seed=0)", "hash": HASH}))
    with stage_run("train_recognizer@baseline-0", "skulab", {"lr": 0.1}, HASH) as run:
        pass
    (single,) = _inputs(run.info.run_id)
    assert single.dataset.digest == HASH[: tracking.DIGEST_CHARS] and HASH.startswith(single.dataset.digest)
    assert single.dataset.name == "synthetic(seed=0)"
    tags = {tag.key: tag.value for tag in single.tags}
    assert tags["mlflow.data.context"] == "train_recognizer" and tags["dataset.hash"] == HASH
    # a resumed cell reopens its run: still one input, not two
    with stage_run("train_recognizer@baseline-0", "skulab", {"lr": 0.1}, HASH, run_id=run.info.run_id):
        pass
    assert len(_inputs(run.info.run_id)) == 1
    runs = mlflow.search_runs(experiment_names=["skulab"])
    assert runs.loc[0, "tags.dataset.hash"] == HASH


def test_a_stale_card_does_not_name_another_dataset(repo):
    (repo / "data/prepared").mkdir(parents=True)
    (repo / "data/prepared/card.json").write_text(json.dumps({"name": "voc:data/raw", "hash": "other"}))
    with stage_run("crop", "skulab", {}, HASH) as run:
        pass
    (single,) = _inputs(run.info.run_id)
    assert single.dataset.name == "data/prepared" and single.dataset.digest == HASH[: tracking.DIGEST_CHARS]


def test_a_run_that_reads_no_dataset_logs_none(repo):
    with stage_run("prepare", "skulab", {}, dataset_hash=None) as run:
        pass
    assert _inputs(run.info.run_id) == []


def test_training_code_does_not_import_mlflow():
    """Only skulab.tracking (and the cell modules, through it) talks to MLflow: the training code gets a RunLogger."""
    import ast
    from pathlib import Path

    import skulab

    package = Path(skulab.__file__).parent
    offenders = []
    for path in sorted([*(package / "recognition").rglob("*.py"), *(package / "detection").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, offenders
    assert (package / "recognition" / "train.py").is_file() and (package / "detection" / "train.py").is_file()


def test_recording_and_null_loggers_take_what_mlflow_logger_takes(tmp_path):
    from skulab.tracking import NullLogger, RecordingLogger

    logger = RecordingLogger()
    logger.log_metrics({"a": 1.0, "b": 2.0}, step=1)
    logger.log_metric("best_epoch", 1)
    logger.log_artifact(tmp_path / "final.json", artifact_path="metrics")
    assert logger.calls == [("metrics", {"a": 1.0, "b": 2.0}, 1), ("metrics", {"best_epoch": 1}, None), ("artifact", str(tmp_path / "final.json"), "metrics")]
    assert logger.metrics(step=1) == {"a": 1.0, "b": 2.0} and logger.metrics() == {"best_epoch": 1}
    assert logger.artifacts("metrics") == ["final.json"]
    NullLogger().log_metrics({"a": 1.0}, step=1), NullLogger().log_metric("a", 1.0), NullLogger().log_artifact("x", "y")


"""MLflow wiring shared by every stage: one SQLite store at the repo root, one run per stage cell.

Runs are named after their DVC stage and tagged with the stage, the git commit and dirty flag, a
hash of the params the stage read and the dataset hash, so runs can be compared and traced back.
A run that reads the prepared dataset also logs it as an MLflow dataset input (digest: the dataset
hash), which fills the runs table's Dataset column and its filters in `mlflow ui`.
"""

import contextlib
import fcntl
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from skulab.errors import SkulabError
from skulab.io import read_json
from skulab.layout import PREPARED, card_file
from skulab.params import flatten, params_hash

# MLflow 3 opens an experiment without this tag on the GenAI traces view; this kind opens the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DIGEST_CHARS = 12  # MLflow keeps at most 36 characters of a dataset digest; the run tags keep the full hash


def repo_root() -> Path:
    """The folder holding dvc.yaml: from the working directory up, else this checkout."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "dvc.yaml").is_file():
        return checkout
    raise SkulabError("no dvc.yaml found in the working directory or its parents")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def ensure_experiment(name: str) -> str:
    """Create the store and experiment once, under a file lock (concurrent schema creation crashes).

    The experiment gets the model-training kind tag, also when an older store's experiment lacks it,
    so that `mlflow ui` opens on its runs rather than on an empty traces view.
    """
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri())
    key, kind = EXPERIMENT_KIND
    with open(root / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri(), tags={key: kind})
        if key not in experiment.tags:
            MlflowClient(tracking_uri()).set_experiment_tag(experiment.experiment_id, key, kind)
        return experiment.experiment_id


def dataset_name(dataset_hash: str) -> str:
    """The prepared dataset's name from its card ('synthetic(seed=0)', 'voc:data/raw'), if the card
    at the repo root is that dataset's; else its folder."""
    try:
        card = read_json(card_file(repo_root() / PREPARED))
    except (OSError, SkulabError):  # no card yet, or an unreadable one: the name is only a label
        return str(PREPARED)
    return card.get("name", str(PREPARED)) if card.get("hash") == dataset_hash else str(PREPARED)


def log_dataset(dataset_hash: str, context: str, name: str | None = None) -> None:
    """Log the prepared dataset as the active run's dataset input, in `context` (the stage).

    Only metadata: the source is data/prepared, the digest the head of the dataset hash (the full
    hash is the input's `dataset.hash` tag), so the runs table shows which data each run read.
    """
    with warnings.catch_warnings():  # two registered local sources both claim a plain path
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(repo_root() / PREPARED))
    dataset = MetaDataset(source, name=name or dataset_name(dataset_hash), digest=dataset_hash[:DIGEST_CHARS])
    mlflow.log_input(dataset, context=context, tags={"dataset.hash": dataset_hash})


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def existing_run(run_id: str | None) -> str | None:
    """A checkpoint's MLflow run, if the store still has it (else the stage starts a new run)."""
    if run_id is None:
        return None
    try:
        MlflowClient(tracking_uri()).get_run(run_id)
    except MlflowException:
        return None
    return run_id


@contextlib.contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: Any,
    dataset_hash: str | None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Open (or, with `run_id`, reopen) the MLflow run of one DVC stage cell, params logged flat."""
    experiment_id = ensure_experiment(experiment)
    tags = {
        "dvc.stage": stage,
        "params.hash": params_hash(params),
        "dataset.hash": dataset_hash or "none",
        **git_state(),
    }
    # `mlflow run` hands its own run over through MLFLOW_RUN_ID; start_run picks it up.
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        if run_id is not None:
            mlflow.set_tags(tags)
        mlflow.set_tag("mlflow.runName", stage)
        flat = flatten(params)
        if flat:
            mlflow.log_params(flat)
        if dataset_hash:
            log_dataset(dataset_hash, context=stage.split("@")[0])  # one context per stage, not per cell
        yield run

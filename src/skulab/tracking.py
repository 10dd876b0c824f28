"""MLflow wiring shared by every stage: one SQLite store at the repo root, one run per stage cell.

Runs are named after their DVC stage and tagged with the stage, the git commit and dirty flag, a
hash of the params the stage read and the dataset hash, so runs can be compared and traced back.
"""

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from skulab.errors import SkulabError
from skulab.params import flatten, params_hash


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
    """Create the store and experiment once, under a file lock (concurrent schema creation crashes)."""
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri())
    with open(root / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())


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
        yield run

"""MLflow wiring shared by every stage: one SQLite store at the repo root, one run per stage cell.

Runs are named after their DVC stage and tagged with the stage, the git commit and dirty flag, a
hash of the params the stage read and the dataset hash, so runs can be compared and traced back.
A run that reads the prepared dataset also logs it as an MLflow dataset input (digest: the dataset
hash), which fills the runs table's Dataset column and its filters in `mlflow ui`.

The store is the main checkout's even when DVC runs a stage in a temporary copy of the workspace
(`dvc exp run --queue`, `skulab grid`): DVC sets DVC_ROOT to the checkout that queued it. Several
stage processes may write to the SQLite store at once: a new store's tables are created under a file
lock, and after that MLflow holds SQLite's write lock only per transaction and waits for it (its
busy timeout, 20 s), so no writer fails or loses anything (tests/test_scale.py runs four at once).
With MLFLOW_TRACKING_URI pointing at a tracking server (scripts/tracking_server.sh) the server
stores the artifacts, and nothing else changes.
"""

import contextlib
import fcntl
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator, Protocol

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from skulab.errors import SkulabError
from skulab.io import params_hash, read_json
from skulab.layout import PREPARED, card_file

# The experiment's kind: model training, not a GenAI app. MLflow 3.17's UI does not read this tag to
# pick its view: its GenAI / Model training switch does (per browser, GenAI by default), so the runs
# table is at /#/experiments/<id>?workflowType=machine_learning (checked with scripts/ui_screenshot.sh).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DIGEST_CHARS = 12  # MLflow keeps at most 36 characters of a dataset digest; the run tags keep the full hash



def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as values (MLflow params are flat)."""
    if hasattr(obj, "model_dump"):  # a pydantic model
        obj = obj.model_dump(mode="json")
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat

def repo_root() -> Path:
    """The folder holding dvc.yaml: from the working directory up, else this checkout."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "dvc.yaml").is_file():
        return checkout
    raise SkulabError("no dvc.yaml found in the working directory or its parents")


def store_root() -> Path:
    """The checkout whose MLflow store (mlflow.db, mlartifacts/) the runs go to.

    A stage that DVC runs in a temporary copy of the workspace (a queued experiment, .dvc/tmp/exps)
    gets DVC_ROOT pointing at the checkout that queued it: its runs land in that checkout's store,
    not in the copy's, which DVC deletes. Elsewhere this is repo_root().
    """
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and (Path(dvc_root) / "dvc.yaml").is_file():
        return Path(dvc_root).resolve()
    return repo_root()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the checkout's mlflow.db; a relative SQLite path is taken from the
    checkout (store_root), not from the folder a stage runs in."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{store_root() / 'mlflow.db'}"
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and path and not path.startswith(("/", ":memory:")) and "?" not in path:
        return f"sqlite:///{store_root() / path}"
    return uri


def is_tracking_server(uri: str) -> bool:
    """A tracking server (http[s]://) decides where artifacts go (its --artifacts-destination); with a
    store this process opens itself (SQLite, a database URI, a folder) they go to <store root>/mlartifacts."""
    return uri.startswith(("http://", "https://"))


def ensure_experiment(name: str) -> str:
    """Create the store and experiment once, under a file lock (concurrent schema creation crashes).

    The experiment gets the model-training kind tag (EXPERIMENT_KIND), also when an older store's
    experiment lacks it. On a local store its
    artifacts go to mlartifacts/ beside mlflow.db; on a tracking server, where the server keeps them.
    """
    root, uri = store_root(), tracking_uri()
    mlflow.set_tracking_uri(uri)
    key, kind = EXPERIMENT_KIND
    with open(root / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        experiment = mlflow.get_experiment_by_name(name)  # creates a new SQLite store's tables
        if experiment is None:
            location = None if is_tracking_server(uri) else (root / "mlartifacts").as_uri()
            try:
                return mlflow.create_experiment(name, artifact_location=location, tags={key: kind})
            except MlflowException:  # another machine created it since (the lock is this machine's only)
                experiment = mlflow.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if key not in experiment.tags:
            MlflowClient(uri).set_experiment_tag(experiment.experiment_id, key, kind)
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
        source = resolve_dataset_source(str(store_root() / PREPARED))  # the checkout's, not a queued run's temporary copy
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
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # no store yet; opening it here would create its tables outside ensure_experiment's lock
    try:
        MlflowClient(uri).get_run(run_id)
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
    if os.environ.get("DVC_EXP_NAME"):  # run by `dvc exp run` / `skulab grid`: its DVC experiment
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
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


class RunLogger(Protocol):
    """What training code logs to: metrics (per epoch with a step) and artifact files, of one run.

    The cell module (or stage) opens the run with `stage_run` and hands the training code an
    `MlflowLogger`; ranks other than 0 and tests get a `NullLogger` or a `RecordingLogger`. Nothing
    under skulab.recognition or skulab.detection imports mlflow.
    """

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_metric(self, key: str, value: float, step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class MlflowLogger:
    """The active MLflow run (the one `stage_run` opened)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics(metrics, step=step)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        mlflow.log_metric(key, value, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)


class NullLogger:
    """Logs nothing: ranks other than 0, and code run without a run."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class RecordingLogger:
    """Keeps every call, in order, for tests: ('metrics', {name: value}, step) and ('artifact', path, artifact_path)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(("metrics", dict(metrics), step))

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.calls.append(("metrics", {key: value}, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.calls.append(("artifact", str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.calls.append(("tags", dict(tags), None))

    def metrics(self, step: int | None = None) -> dict[str, float]:
        """Every metric logged at `step` (None: without a step), later values winning."""
        return {k: v for kind, values, at in self.calls if kind == "metrics" and at == step for k, v in values.items()}

    def artifacts(self, artifact_path: str | None = None) -> list[str]:
        """The file names logged under `artifact_path`, in order."""
        return [Path(path).name for kind, path, at in self.calls if kind == "artifact" and at == artifact_path]

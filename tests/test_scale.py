"""Scaling up (README "Scaling up"): recognizer cells N at a time through DVC's experiment queue
(`skulab grid`), several writers on the default SQLite store at once, a PostgreSQL-backed tracking
server (scripts/tracking_server.sh) and a DVC remote that spares a fresh clone every cell's training.

Each test runs the real prepare, crop and train_recognizer stages (dvc.yaml's own definitions,
without the detector stages) on a tiny params override, in temporary git + DVC repos; the tracking
server's test also runs evaluate and package.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

import checkout
from checkout import BIN, commit_all, env_in, free_port, new_repo, stop_group, wait_for_http
from conftest import REPO, TINY, deep_merge, repo_params, write_params
from skulab.serving.pyfunc import request_frame

pytestmark = pytest.mark.e2e
CELLS = [f"train_recognizer@{variant}-{seed}" for variant in ("baseline", "triplet") for seed in (0, 1)]
SCALE = deep_merge(TINY, {"crop": {"detector": "none"}})  # no detector stages: test crops are ground truth
RUN_ONLY = {"run_id", "train_seconds"}  # final.json keys that differ between two runs of one cell


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    # One torch thread per process: twice as fast on 2 cores, and the sequential and the parallel runs
    # must use the same thread count to give the same numbers (README "Scaling up").
    return env_in(cwd, OMP_NUM_THREADS="1", **extra)


def _run(args, cwd: Path, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    return checkout.run(args, cwd, check, **{"OMP_NUM_THREADS": "1", **extra})


DETECTOR_DEPS = ("data/detections", "metrics/detector", "models/detector")


def _pipeline(names=("prepare", "crop", "train_recognizer")) -> dict:
    """dvc.yaml's stages `names` as they are, without their dependencies on the detector stages."""
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: real["stages"][name] for name in names}
    for stage in stages.values():
        stage["deps"] = [dep for dep in stage["deps"] if dep not in DETECTOR_DEPS]
    return {"stages": stages}


def _copy(source: Path, target: Path) -> Path:
    # not the MLflow store: its experiment would keep writing artifacts into the source's mlartifacts/
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("tmp", "__pycache__", "mlflow.db", ".mlflow.lock", "mlartifacts"))
    return target


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A committed tiny repo on which nothing has run yet."""
    return new_repo(tmp_path_factory.mktemp("scale") / "fresh", deep_merge(repo_params(), SCALE), _pipeline())


@pytest.fixture(scope="module")
def cropped(fresh, tmp_path_factory) -> Path:
    """The tiny repo with prepare and crop run and committed: only the 4 recognizer cells are dirty."""
    repo = _copy(fresh, tmp_path_factory.mktemp("scale") / "cropped")
    _run([BIN / "dvc", "repro", "crop"], repo)
    commit_all(repo, "crops")
    return repo


@pytest.fixture(scope="module")
def sequential(cropped, tmp_path_factory) -> tuple[Path, float]:
    """The 4 cells trained one after the other by `dvc repro`, committed (dvc.lock, metrics)."""
    repo = _copy(cropped, tmp_path_factory.mktemp("scale") / "sequential")
    started = time.monotonic()
    out = _run([BIN / "dvc", "repro"], repo).stdout
    elapsed = time.monotonic() - started
    assert set(re.findall(r"Running stage '([^']+)'", out)) == set(CELLS)
    commit_all(repo, "cells")
    return repo, elapsed


def _final(repo: Path, cell: str) -> dict:
    return json.loads((repo / "metrics/recognizer" / cell.split("@")[1] / "final.json").read_text())


def _history(repo: Path, cell: str) -> list[dict]:
    with open(repo / "metrics/recognizer" / cell.split("@")[1] / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def _recognizer_runs(uri: str):
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["skulab"])
    return runs[runs["tags.dvc.stage"].str.startswith("train_recognizer@")]


# --- 1. skulab grid: the dirty cells, N at a time, through DVC's experiment queue ---------------


@pytest.mark.timeout(1800)  # with the module's fixtures: prepare, crop and the 4 cells trained sequentially first
def test_grid_trains_the_dirty_cells_two_at_a_time_like_a_sequential_repro(cropped, sequential, tmp_path):
    repo = _copy(cropped, tmp_path / "grid")
    seq_repo, seq_seconds = sequential
    started = time.monotonic()
    result = _run([BIN / "skulab", "grid", "--jobs", "2"], repo)
    grid_seconds = time.monotonic() - started
    print(f"4 tiny cells: dvc repro {seq_seconds:.0f} s, skulab grid --jobs 2 {grid_seconds:.0f} s")
    out = result.stdout
    assert "dvc queue start --jobs 2" in out and "grid: 4/4 cells trained" in out, out
    names = dict(re.findall(r"dvc exp run --queue (\S+) --name (\S+)", out))
    assert sorted(names) == CELLS
    # The workspace holds every cell as its experiment left it: nothing left for dvc to run but nothing else.
    assert json.loads(_run([BIN / "dvc", "status", "--json", "train_recognizer"], repo).stdout or "{}") == {}
    for cell in CELLS:
        assert (repo / "models/recognizer" / cell.split("@")[1] / "best.pt").is_file()
        # bit-for-bit on CPU: the same metrics and curves as the sequential run
        grid, seq = _final(repo, cell), _final(seq_repo, cell)
        assert {k: v for k, v in grid.items() if k not in RUN_ONLY} == {k: v for k, v in seq.items() if k not in RUN_ONLY}, cell
        assert _history(repo, cell) == _history(seq_repo, cell), cell
    # One MLflow run per cell, in this checkout's store (not in the queue's temporary copies), tagged with its experiment.
    runs = _recognizer_runs(f"sqlite:///{repo / 'mlflow.db'}").set_index("tags.dvc.stage").sort_index()
    seq_runs = _recognizer_runs(f"sqlite:///{seq_repo / 'mlflow.db'}").set_index("tags.dvc.stage").sort_index()
    assert list(runs.index) == list(seq_runs.index) == CELLS
    assert runs["tags.dvc.experiment"].to_dict() == names
    same = [c for c in runs.columns if c.startswith(("metrics.", "params.", "tags.params.hash", "tags.dataset.hash")) and "seconds" not in c]
    assert runs[same].equals(seq_runs[same])  # every cell's params and last metric values, as sequentially
    for cell, row in runs.iterrows():
        assert row["run_id"] == _final(repo, cell)["run_id"] and row["status"] == "FINISHED"
        assert row["metrics.test_proto_acc"] == _final(repo, cell)["test_proto_acc"]
        assert row["artifact_uri"].startswith((repo / "mlartifacts").as_uri())
    assert not list((repo / ".dvc").rglob("mlflow.db"))
    # Each cell is a DVC experiment: `dvc exp show` compares them, `dvc exp apply` restores one.
    shown = _run([BIN / "dvc", "exp", "show", "--json"], repo).stdout
    assert all(name in shown for name in names.values())
    again = _run([BIN / "skulab", "grid", "--jobs", "2"], repo)
    assert "every recognizer cell is up to date" in again.stdout
    assert "Running stage" not in _run([BIN / "dvc", "repro", "train_recognizer"], repo).stdout


def test_grid_refuses_stale_upstream_stages_and_bad_jobs_in_one_line(fresh, tmp_path):
    repo = _copy(fresh, tmp_path / "stale")
    result = _run([BIN / "skulab", "grid"], repo, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: dvc status: crop, prepare not up to date") and "dvc repro crop prepare" in result.stderr
    result = _run([BIN / "skulab", "grid", "--jobs", "0"], repo, check=False)
    assert (result.returncode, result.stderr) == (2, "error: --jobs: must be at least 1, got 0\n")
    result = _run([BIN / "skulab", "grid", "baseline-*", "tripplet-*"], repo, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cell pattern 'tripplet-*' matches no recognizer cell; params.yaml has baseline-0, baseline-1, triplet-0")


def test_grid_refuses_uncommitted_upstream_results(cropped, tmp_path):
    """Queued cells start from the last commit: with the upstream results uncommitted, every cell would rerun them."""
    repo = _copy(cropped, tmp_path / "uncommitted")
    with open(repo / "dvc.lock", "a") as lock:
        lock.write("\n")
    result = _run([BIN / "skulab", "grid"], repo, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: dvc.lock has uncommitted changes") and "git commit" in result.stderr
    assert "Queued" not in _run([BIN / "dvc", "queue", "status"], repo).stdout


def test_a_stage_in_a_queued_copy_logs_to_the_checkout_that_queued_it(tmp_path, monkeypatch):
    from skulab import tracking

    checkout, copy = tmp_path / "checkout", tmp_path / "checkout/.dvc/tmp/exps/tmpabc"
    copy.mkdir(parents=True)
    for root in (checkout, copy):
        (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"  # plain dvc repro / a stage by hand
    monkeypatch.setenv("DVC_ROOT", str(checkout))  # what DVC's queue sets for a queued experiment's stages
    assert tracking.tracking_uri() == f"sqlite:///{checkout / 'mlflow.db'}" and tracking.repo_root() == copy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/store.db")  # relative: from the checkout, not the copy
    assert tracking.tracking_uri() == f"sqlite:///{checkout / 'runs/store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000" and tracking.is_tracking_server(tracking.tracking_uri())
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "nowhere"))  # not a DVC repo: ignored
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"


# --- 2. several stage processes writing to the SQLite store at once -------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow
    from skulab.tracking import stage_run
    worker, steps, start = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    artifact = Path(f"artifact{worker}.txt")
    artifact.write_text(f"worker {worker}")
    while time.time() < start:  # every writer starts its run at the same moment
        time.sleep(0.005)
    with stage_run(f"train_recognizer@writer-{worker}", "skulab", {"worker": worker, "lr": 0.1}, "ab" * 32) as run:
        for step in range(steps):
            mlflow.log_metric("loss", worker + step / 1000, step=step)
            mlflow.log_param(f"p{step}", step)
            if step % 10 == 0:
                mlflow.log_artifact(str(artifact), artifact_path=f"step{step}")
        mlflow.log_metrics({"a": 1.0, "b": 2.0}, step=steps)
    print(run.info.run_id)
""")


def test_concurrent_writers_lose_nothing_on_the_sqlite_store(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    steps, writers = 60, 4
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    start = time.time() + 25  # after every process has imported mlflow
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(w), str(steps), str(start)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(writers)
    ]
    outputs = [proc.communicate(timeout=400) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err and "Traceback" not in err, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]
    assert len(set(run_ids)) == writers
    for worker, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["dvc.stage"] == f"train_recognizer@writer-{worker}"
        assert len(run.data.params) == steps + 2  # worker, lr and every p<step>
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))
        assert all(m.value == pytest.approx(worker + m.step / 1000) for m in history)
        assert run.data.metrics["a"] == 1.0 and run.data.metrics["b"] == 2.0
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert artifacts == {f"step{step}" for step in range(0, steps, 10)}
        assert (Path(run.info.artifact_uri.removeprefix("file://")) / "step50" / f"artifact{worker}.txt").read_text() == f"worker {worker}"
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.digest == ("ab" * 32)[:12]


# --- 3. a PostgreSQL-backed tracking server ------------------------------------------------------


def _cluster_online() -> bool:
    lines = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines()
    return bool(lines) and lines[0].split()[3] == "online"


def _as_postgres(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args), capture_output=True, text=True)


@pytest.mark.timeout(1200)
def test_tracking_server_takes_every_stage_and_the_registry(fresh, tmp_path):
    if shutil.which("pg_lsclusters") is None:
        pytest.fail("PostgreSQL is not installed, and the tracking server test needs it: apt-get install postgresql "
                    "(.ci/run installs it)")
    repo = _copy(fresh, tmp_path / "served")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(_pipeline(("prepare", "crop", "train_recognizer", "evaluate", "package")), sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["recognizer"]["variants"] = {"baseline": {}}  # 2 cells are enough here
    params["detector"]["variants"] = {}  # recognition only: no detector stages in this pipeline
    write_params(repo / "params.yaml", params)
    port, database = free_port(), f"skulab_test_{os.getpid()}"
    was_online = _cluster_online()
    env = _env(REPO, SKULAB_SERVER_PORT=str(port), SKULAB_PG_DB=database, SKULAB_ARTIFACTS=str(tmp_path / "served-artifacts"),
               SKULAB_SERVER_WORKERS="1", MLFLOW=str(BIN / "mlflow"))
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["bash", REPO / "scripts/tracking_server.sh"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", server, tmp_path / "server.log")
        assert f"export MLFLOW_TRACKING_URI={uri}" in (tmp_path / "server.log").read_text()
        # The only change: MLFLOW_TRACKING_URI. Every stage runs, evaluate and package (the registry) included.
        ran = _run([BIN / "dvc", "repro"], repo, MLFLOW_TRACKING_URI=uri).stdout
        stages = ["prepare", "crop", "train_recognizer@baseline-0", "train_recognizer@baseline-1", "evaluate", "package"]
        assert set(re.findall(r"Running stage '([^']+)'", ran)) == set(stages)
        assert "Downloading artifacts" not in ran  # the package stage's model check, without a bar per download
        assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["skulab"])
        assert sorted(runs["tags.dvc.stage"]) == sorted(stages)
        assert set(runs["status"]) == {"FINISHED"}
        client = MlflowClient(uri)
        for _, row in runs.iterrows():
            assert row["artifact_uri"].startswith("mlflow-artifacts:/"), row["artifact_uri"]
        cell = runs[runs["tags.dvc.stage"] == "train_recognizer@baseline-0"].iloc[0]
        assert cell["run_id"] == _final(repo, "train_recognizer@baseline-0")["run_id"]
        assert len(client.get_metric_history(cell["run_id"], "val_proto_acc")) == SCALE["recognizer"]["base"]["epochs"]
        served = [a.path for a in client.list_artifacts(cell["run_id"])]
        assert served and list((tmp_path / "served-artifacts").rglob(f"{cell['run_id']}/artifacts/*"))
        evaluate = runs[runs["tags.dvc.stage"] == "evaluate"].iloc[0]
        assert {a.path for a in client.list_artifacts(evaluate["run_id"])} >= {"report", "summary"}
        # The registry: the package stage registered the winner on the server and moved the alias to it.
        package = json.loads((repo / "models/package/package.json").read_text())
        champion = client.get_model_version_by_alias(package["model_name"], package["alias"])
        assert champion.version == str(package["version"]) and champion.run_id == package["run_id"]
        assert package["tracking_uri"] == uri
        card = (repo / "models/package/model_card.md").read_text()
        assert f"MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{package['model_name']}@{package['alias']}" in card
        example = sorted((repo / "data/prepared/images/test").iterdir())[0]
        model = mlflow.pyfunc.load_model(f"models:/{package['model_name']}@{package['alias']}")
        [answer] = model.predict(request_frame([example.read_bytes()]))
        assert answer["error"] is None and answer["products"][0]["sku"]
    finally:
        stop_group(server, grace=60)
        log.close()
        _as_postgres("psql", "-X", "-q", "-c", f"DROP DATABASE IF EXISTS {database}")
        if not was_online:  # leave PostgreSQL as the test found it
            version, cluster = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.split()[:2]
            subprocess.run(["pg_ctlcluster", version, cluster, "stop"], capture_output=True)


# --- 4. a DVC remote: a fresh clone pulls every cell instead of training it -----------------------


def test_a_fresh_clone_pulls_the_cells_and_trains_nothing(sequential, tmp_path):
    seq_repo, _ = sequential
    source = _copy(seq_repo, tmp_path / "source")
    remote = tmp_path / "remote"
    _run([BIN / "dvc", "remote", "add", "-d", "store", remote], source)
    commit_all(source, "remote")
    pushed = _run([BIN / "dvc", "push", "--run-cache"], source)
    assert remote.is_dir() and any(remote.rglob("*")), pushed.stdout
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", source, clone], tmp_path)
    assert not (clone / "models/recognizer/baseline-0").exists()
    _run([BIN / "dvc", "pull", "--run-cache"], clone)
    models = sorted(clone.glob("models/recognizer/*/best.pt"))
    assert [p.parent.name for p in models] == sorted(cell.split("@")[1] for cell in CELLS)
    before = {p: p.stat().st_mtime_ns for p in models}
    repro = _run([BIN / "dvc", "repro"], clone)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "up to date" in _run([BIN / "dvc", "status"], clone).stdout
    assert {p: p.stat().st_mtime_ns for p in models} == before  # no cell touched its checkpoints
    assert not (clone / "mlflow.db").exists()  # no stage opened an MLflow run
    for path in models:
        assert path.read_bytes() == (seq_repo / path.relative_to(clone)).read_bytes()


def test_grid_starts_the_queue_workers_again_when_they_stop_with_cells_queued(monkeypatch, capsys):
    """DVC's workers can stop with experiments still queued (treeverse/dvc#10562): grid starts them again, then gives up."""
    from skulab import cli

    clock = iter(range(0, 10_000, 5))  # 5 s per look at the clock
    started = []
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(cli, "_workers_alive", lambda root: False)
    monkeypatch.setattr(cli, "_dvc", lambda root, *args: started.append(args) or "")
    # Two restarts bring the cells through; the first start's workers had stopped after one cell.
    monkeypatch.setattr(cli, "queue_states", lambda root: {"a": "Success", "b": "Queued" if len(started) < 2 else "Success"})
    assert cli.wait_for_queue(Path("."), ["a", "b"], jobs=2) == {"a": "Success", "b": "Success"}
    assert started == [("queue", "start", "--jobs", "2")] * 2
    assert "starting them again (2/3, treeverse/dvc#10562)" in capsys.readouterr().out
    # Workers that never stay up: three restarts, then one line saying what to do.
    started.clear()
    monkeypatch.setattr(cli, "queue_states", lambda root: {"a": "Success", "b": "Queued"})
    with pytest.raises(cli.SkulabError, match="1 grid experiments queued and no worker"):
        cli.wait_for_queue(Path("."), ["a", "b"], jobs=2)
    assert len(started) == cli.WORKER_RESTARTS


def test_cells_sharing_the_cores_wait_passively_and_one_cell_alone_does_not(monkeypatch):
    from skulab import cli

    assert cli.shared_core_env(1, {}) == {}  # one cell at a time: OpenMP's default (fastest alone)
    assert cli.shared_core_env(2, {}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert cli.shared_core_env(4, {"OMP_WAIT_POLICY": "ACTIVE"}) == {}  # the user's own setting wins
    # and importing skulab leaves the policy alone (a plain `dvc repro` cell keeps OpenMP's default)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, skulab, skulab.cli, skulab.tracking; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "None"

"""A temporary git + DVC checkout of the pipeline, and the processes end-to-end tests start in it
(dvc, stages, servers): one copy of the environment, repo and process-group handling that
test_e2e.py and test_scale.py share."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from conftest import REPO, write_params

BIN = Path(sys.executable).parent  # this venv's python, dvc, mlflow and skulab
GITIGNORE = "mlflow.db\n.mlflow.lock\nmlartifacts/\n"
# Folders that exist with or without detectors (crop's and package's dependencies).
KEPT = ("metrics/detector/.gitkeep", "data/detections/.gitignore", "models/detector/.gitignore")


def env_in(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment a user's shell in `cwd` would have: this venv first on PATH, the checkout's own
    code (as DVC hashes it) on PYTHONPATH, and no MLflow or DVC variables of the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(cwd / "src")
    return env | extra


def run(args, cwd: Path, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    """Run a command in `cwd` (env_in); with `check`, fail the test with the end of its output."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env_in(cwd, **extra), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def new_repo(repo: Path, params: dict, pipeline: dict | None = None) -> Path:
    """A committed git + DVC checkout of the pipeline's code with `params`, as a fresh clone has it;
    `pipeline` replaces dvc.yaml."""
    repo.mkdir(parents=True, exist_ok=True)
    if pipeline is None:
        shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    else:
        (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    for name in ("stages", "src", "configs"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "data/raw", repo / "data/raw", dirs_exist_ok=True)  # prepare's (empty) external-data dependency
    for keep in KEPT:
        (repo / keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / keep, repo / keep)
    shutil.copy(REPO / "requirements.lock", repo / "requirements.lock")  # the package stage pins the model's requirements from it
    write_params(repo / "params.yaml", params)
    (repo / ".gitignore").write_text(GITIGNORE)
    run(["git", "init", "-q"], repo)
    run([BIN / "dvc", "init", "-q"], repo)
    commit_all(repo, "init")
    return repo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until `url` answers 200; fail with the end of `log` if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{url} not up:\n" + log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)


def group_members(pgid: int) -> list[int]:
    """Processes still running in a process group (from /proc; a zombie has ended)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # after the command: state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM a process started with start_new_session=True and everything it started, then SIGKILL
    what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(process.pid):
            return

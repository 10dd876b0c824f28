"""The whole DVC pipeline on a tiny params override, in a temporary copy of the repo."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, TINY, deep_merge, repo_params, write_params

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _run(args, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(cwd / "src")  # run the copied code, as DVC hashes it
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    for name in ("stages", "src", "configs"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "data/raw", repo / "data/raw")  # prepare's (empty) external-data dependency
    write_params(repo / "params.yaml", deep_merge(repo_params(), TINY))
    (repo / ".gitignore").write_text("mlflow.db\n.mlflow.lock\nmlartifacts/\n")
    _run(["git", "init", "-q"], repo)
    _run([BIN / "dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    first = _run([BIN / "dvc", "repro"], repo)
    return repo, first


def test_first_repro_runs_every_stage(pipeline):
    repo, first = pipeline
    for stage in ("prepare", "train_detector@faster_rcnn", "train_detector@retinanet", "crop", "train_recognizer@baseline-0", "train_recognizer@triplet-1", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert set(summary["variants"]) == {"baseline", "triplet"}
    assert set(summary["variants"]["baseline"]["runs"]) == {"0", "1"}
    assert "test_top1" not in summary["variants"]["triplet"]  # metric-only head: no classifier accuracy
    assert 0 <= summary["variants"]["baseline"]["test_top1"]["mean"] <= 1
    assert "| baseline |" in (repo / "metrics/summary.md").read_text()
    assert summary["rank_by"].startswith("val_")  # selected on val, test reported beside it
    assert "test_proto_acc" in summary["variants"]["triplet"] and "vs_baseline" in summary["variants"]["triplet"]
    for png in ("reports/ranking.png", "reports/axis_loss_curves.png", "reports/detectors_val_map.png", "reports/confusion.png", "metrics/recognizer/baseline-0/curves.png"):
        assert (repo / png).read_bytes()[:4] == b"\x89PNG", png
    report = (repo / "reports/report.md").read_text()
    for section in ("## Ranking", "## Axis: loss", "## Detectors", "## End to end on the shelf", "## Confusions of the best variant"):
        assert section in report, section
    assert (repo / "models/recognizer/baseline-0/best.pt").is_file()
    shown = _run([BIN / "dvc", "metrics", "show", "--json"], repo).stdout
    assert "metrics/summary.json" in shown and "metrics/recognizer/triplet-0/final.json" in shown
    assert "metrics/detector/retinanet/final.json" in shown


def test_detectors_feed_the_test_crops(pipeline):
    repo, _ = pipeline
    for name in ("faster_rcnn", "retinanet"):
        assert (repo / f"models/detector/{name}/best.pth").is_file()
        assert (repo / f"data/detections/{name}/test.bbox.json").is_file()
    summary = json.loads((repo / "metrics/summary.json").read_text())
    best = max(summary["detectors"], key=lambda name: summary["detectors"][name]["val_bbox_mAP"])
    assert summary["test_crops_from"] == best
    with open(repo / "data/crops/manifest.csv", newline="") as f:
        test_rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
    assert test_rows and {(row["origin"], row["detector"]) for row in test_rows} == {("detection", best)}
    stats = json.loads((repo / "data/crops/stats.json").read_text())["test"]
    assert stats["matched"] + stats["missed_gt"] == stats["gt_boxes"]
    assert "| retinanet |" in (repo / "metrics/summary.md").read_text()
    plots = _run([BIN / "dvc", "plots", "show", "--json"], repo).stdout
    assert "metrics/detector/faster_rcnn/history.csv" in plots


def test_nothing_to_do_after_repro(pipeline):
    repo, _ = pipeline
    assert "up to date" in _run([BIN / "dvc", "status"], repo).stdout
    again = _run([BIN / "dvc", "repro"], repo).stdout
    assert "Running stage" not in again


def test_mlflow_has_one_tagged_run_per_cell(pipeline):
    repo, _ = pipeline
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["skulab"])
    stages = sorted(runs["tags.dvc.stage"])
    cells = [f"train_recognizer@{v}-{s}" for v in ("baseline", "triplet") for s in (0, 1)]
    detectors = ["train_detector@faster_rcnn", "train_detector@retinanet"]
    assert stages == sorted(["prepare", "crop", "evaluate", *detectors, *cells])
    detector_run = runs[runs["tags.dvc.stage"] == "train_detector@retinanet"].iloc[0]
    history = mlflow.MlflowClient().get_metric_history(detector_run["run_id"], "val_bbox_mAP")
    assert [m.step for m in history] == [1, 2]
    assert detector_run["params.lr"] == "0.01" and detector_run["tags.dataset.hash"] == runs["tags.dataset.hash"].iloc[0]
    assert (runs["tags.mlflow.runName"] == runs["tags.dvc.stage"]).all()
    card_hash = json.loads((repo / "data/prepared/card.json").read_text())["hash"]
    trained = runs[runs["tags.dvc.stage"].str.startswith("train_recognizer@")]
    assert (trained["tags.dataset.hash"] == card_hash).all()
    assert trained["tags.git.commit"].str.fullmatch(r"[0-9a-f]{40}").all()
    assert trained["tags.git.dirty"].isin(["true", "false"]).all()
    assert trained["tags.params.hash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert trained["tags.params.hash"].nunique() == 4
    assert (trained["params.lr"] == str(repo_params()["recognizer"]["base"]["lr"])).all()
    assert trained["metrics.test_proto_acc"].notna().all()


def test_editing_one_variant_reruns_only_its_cells(pipeline):
    repo, _ = pipeline
    params = deep_merge(repo_params(), TINY)
    params["recognizer"]["variants"]["baseline"] = {"lr": 0.0005}
    write_params(repo / "params.yaml", params)
    status = _run([BIN / "dvc", "status"], repo).stdout
    changed = set(re.findall(r"^(\S+):\s*$", status, flags=re.M))
    assert changed == {"train_recognizer@baseline-0", "train_recognizer@baseline-1"}, status
    rerun = _run([BIN / "dvc", "repro"], repo).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", rerun))
    assert ran == {"train_recognizer@baseline-0", "train_recognizer@baseline-1", "evaluate"}


def test_editing_one_detector_reruns_only_its_cell(pipeline):
    repo, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["detector"]["variants"]["retinanet"]["lr"] = 0.005
    write_params(repo / "params.yaml", params)
    rerun = _run([BIN / "dvc", "repro"], repo).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", rerun))
    assert {stage for stage in ran if stage.startswith("train_detector@")} == {"train_detector@retinanet"}
    assert {"crop", "evaluate"} <= ran  # the best detector may have changed


def test_adding_a_variant_runs_only_its_cells(pipeline):
    repo, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["recognizer"]["variants"]["ranger_ms_cosine"] = {
        "optimizer": "ranger", "loss": {"multi_similarity": 1.0}, "schedule": "warmup_cosine"
    }
    write_params(repo / "params.yaml", params)
    rerun = _run([BIN / "dvc", "repro"], repo).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", rerun))
    assert ran == {"train_recognizer@ranger_ms_cosine-0", "train_recognizer@ranger_ms_cosine-1", "evaluate"}
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["variants"]["ranger_ms_cosine"]["overrides"]["optimizer"] == "ranger"


def test_bad_params_fail_the_stage_with_one_line(pipeline):
    repo, _ = pipeline
    params = deep_merge(repo_params(), TINY)
    params["recognizer"]["variants"]["triplet"] = {"loss": {"triplet": 1.0}, "optimizer": "lion"}
    write_params(repo / "params.yaml", params)
    result = _run([BIN / "dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "recognizer.variants.triplet.optimizer: unknown optimizer 'lion'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout

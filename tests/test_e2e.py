"""The whole DVC pipeline on a tiny params override, in a temporary copy of the repo."""

import base64
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from checkout import BIN, free_port, group_members, new_repo, run, stop_group, wait_for_http
from conftest import TINY, deep_merge, repo_params, write_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = new_repo(tmp_path_factory.mktemp("repo"), deep_merge(repo_params(), TINY))
    first = run([BIN / "dvc", "repro"], repo)
    return repo, first


def test_a_class_folder_study_runs_without_detectors(tmp_path, tiny_crops):
    """detector.variants: {} is a recognition-only study: no detector cell, crops are the whole images."""
    from test_external import write_folders

    params = deep_merge(repo_params(), TINY)
    params["detector"]["variants"] = {}
    params["recognizer"]["variants"] = {"baseline": {}}
    params["recognizer"]["seeds"] = [0]
    params["prepare"]["source"] = "folders"
    params["prepare"]["external"]["path"] = "data/raw/folders"
    repo = tmp_path / "repo"
    write_folders(repo / "data/raw/folders", tiny_crops)
    repo = new_repo(repo, params)
    done = run([BIN / "dvc", "repro"], repo).stdout
    assert "train_detector" not in done
    for stage in ("prepare", "crop", "train_recognizer@baseline-0", "evaluate", "package"):
        assert f"Running stage '{stage}'" in done, stage
    stats = json.loads((repo / "data/crops/stats.json").read_text())
    card = json.loads((repo / "data/prepared/card.json").read_text())
    assert stats["test_detector"] == "none" and card["task"] == "classification"
    assert stats["test"]["crops"] == card["splits"]["test"]["images"]  # every test image, whole
    report = (repo / "reports/report.md").read_text()
    assert "## Detectors" not in report and "## Ranking" in report
    assert json.loads((repo / "metrics/summary.json").read_text())["detectors"] == {}
    assert "up to date" in run([BIN / "dvc", "status"], repo).stdout


def test_first_repro_runs_every_stage(pipeline):
    repo, first = pipeline
    for stage in ("prepare", "train_detector@faster_rcnn", "train_detector@retinanet", "crop", "train_recognizer@baseline-0", "train_recognizer@triplet-1", "evaluate", "package"):
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
    shown = run([BIN / "dvc", "metrics", "show", "--json"], repo).stdout
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
    plots = run([BIN / "dvc", "plots", "show", "--json"], repo).stdout
    assert "metrics/detector/faster_rcnn/history.csv" in plots


def test_nothing_to_do_after_repro(pipeline):
    repo, _ = pipeline
    assert "up to date" in run([BIN / "dvc", "status"], repo).stdout
    again = run([BIN / "dvc", "repro"], repo).stdout
    assert "Running stage" not in again


def test_mlflow_has_one_tagged_run_per_cell(pipeline):
    repo, _ = pipeline
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["skulab"])
    stages = sorted(runs["tags.dvc.stage"])
    cells = [f"train_recognizer@{v}-{s}" for v in ("baseline", "triplet") for s in (0, 1)]
    detectors = ["train_detector@faster_rcnn", "train_detector@retinanet"]
    assert stages == sorted(["prepare", "crop", "evaluate", "package", *detectors, *cells])
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
    status = run([BIN / "dvc", "status"], repo).stdout
    changed = set(re.findall(r"^(\S+):\s*$", status, flags=re.M))
    # evaluate reads recognizer.variants (a removed variant must leave the report), so it is dirty too
    assert changed == {"train_recognizer@baseline-0", "train_recognizer@baseline-1", "evaluate"}, status
    rerun = run([BIN / "dvc", "repro"], repo).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", rerun))
    assert ran == {"train_recognizer@baseline-0", "train_recognizer@baseline-1", "evaluate", "package"}


def test_editing_one_detector_reruns_only_its_cell(pipeline):
    repo, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["detector"]["variants"]["retinanet"]["lr"] = 0.005
    write_params(repo / "params.yaml", params)
    rerun = run([BIN / "dvc", "repro"], repo).stdout
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
    rerun = run([BIN / "dvc", "repro"], repo).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", rerun))
    assert ran == {"train_recognizer@ranger_ms_cosine-0", "train_recognizer@ranger_ms_cosine-1", "evaluate", "package"}
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["variants"]["ranger_ms_cosine"]["overrides"]["optimizer"] == "ranger"


def test_bad_params_fail_the_stage_with_one_line(pipeline):
    repo, _ = pipeline
    params = deep_merge(repo_params(), TINY)
    params["recognizer"]["variants"]["triplet"] = {"loss": {"triplet": 1.0}, "optimizer": "lion"}
    write_params(repo / "params.yaml", params)
    result = run([BIN / "dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "recognizer.variants.triplet.optimizer: unknown optimizer 'lion'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


# --- the package stage: the winner as one registered MLflow model ------------------------------
# These read the pipeline's last successful state (the tests above leave it consistent: each of
# their repros ends with package) and run the package stage's script directly, not through DVC.

MODEL = "skulab-shelf"


def _registry(repo):
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _test_image_with_products(repo):
    """A test image, its detector crops (manifest rows in rank order) and the best cell's answers for them."""
    with open(repo / "data/crops/manifest.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
    image = max(sorted({row["source_image"] for row in rows}), key=lambda name: sum(row["source_image"] == name for row in rows))
    summary = json.loads((repo / "metrics/summary.json").read_text())
    cell = f"{summary['best_variant']}-{summary['best_seed']}"
    with open(repo / f"metrics/recognizer/{cell}/test_predictions.csv", newline="") as f:
        answers = {row["crop"]: row for row in csv.DictReader(f)}
    crops = sorted((row for row in rows if row["source_image"] == image), key=lambda row: row["crop"])
    return repo / "data/prepared/images" / image, crops, [answers[row["crop"]] for row in crops], cell


def test_package_model_gives_the_cells_boxes_and_labels(pipeline):
    import pandas as pd

    repo, _ = pipeline
    client = _registry(repo)
    package = json.loads((repo / "models/package/package.json").read_text())
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert package["detector"] == summary["test_crops_from"]  # both the best by val mAP
    assert package["recognizer"] == f"{summary['best_variant']}-{summary['best_seed']}"
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == package["version"]
    card = (repo / "models/package/model_card.md").read_text()
    for section in ("## Sources", f"## Detector: {package['detector']}", f"## Recognizer: {package['recognizer']}", "## End to end", "## Classes"):
        assert section in card, section
    path, crops, answers, _ = _test_image_with_products(repo)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    [record] = model.predict(pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode()]}))
    assert record["error"] is None and len(record["products"]) == len(crops) > 0
    classes = json.loads((repo / "data/crops/classes.json").read_text())
    names = [classes[key] for key in sorted(classes, key=int)]
    threshold = package["reject_threshold"]
    for product, crop, answer in zip(record["products"], crops, answers):
        assert product["box"] == [float(crop[key]) for key in ("x", "y", "w", "h")]  # the detector cell's box
        assert product["detector_score"] == float(crop["score"])
        assert product["similarity"] == pytest.approx(float(answer["proto_similarity"]), abs=1e-4)
        if product["sku"] == "unknown":
            assert float(answer["proto_similarity"]) < threshold + 1e-4
        else:  # the recognizer cell's answer
            assert product["sku"] == names[int(answer["pred"])]
            assert product["confidence"] == pytest.approx(float(answer["confidence"]), abs=1e-4)
    assert sum(record["counts"].values()) == len(crops)


def test_predict_command_names_bad_files_and_goes_on(pipeline, tmp_path):
    repo, _ = pipeline
    path, crops, _, _ = _test_image_with_products(repo)
    folder = tmp_path / "shelf"
    folder.mkdir()
    shutil.copy(path, folder / "good.jpg")
    shutil.copy(sorted((repo / "data/prepared/images/test").iterdir())[0], folder / "other.jpg")
    (folder / "corrupt.jpg").write_bytes(path.read_bytes()[:2000])
    (folder / "notes.txt").write_text("shelf 3, aisle 7\n")
    result = run([BIN / "skulab", "predict", str(folder), "--out", str(tmp_path / "results.jsonl"), "--draw", str(tmp_path / "drawn")], repo, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(line.startswith(f"error: {folder / 'corrupt.jpg'}: corrupt or truncated image") for line in errors), errors
    assert any(line.startswith(f"error: {folder / 'notes.txt'}: not an image") for line in errors), errors
    records = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == ["corrupt.jpg", "good.jpg", "notes.txt", "other.jpg"]
    assert records["good.jpg"]["error"] is None and len(records["good.jpg"]["products"]) == len(crops)
    assert records["other.jpg"]["error"] is None
    for name in ("good", "other"):
        assert (tmp_path / "drawn" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_served_endpoint_answers_and_leaves_no_process(pipeline, tmp_path):
    import urllib.error
    import urllib.request

    import pandas as pd

    repo, _ = pipeline
    _registry(repo)
    path, crops, _, _ = _test_image_with_products(repo)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    command = [BIN / "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/ping", server, tmp_path / "serve.log")
        body = {"dataframe_records": [{"image": base64.b64encode(path.read_bytes()).decode()}, {"image": base64.b64encode(b"not an image").decode()}]}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        stop_group(server)
        log.close()
    assert group_members(server.pid) == []  # the server and its uvicorn worker are gone
    served, bad = answer["predictions"]
    assert bad["error"].startswith("not an image") and bad["products"] == []
    local = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(pd.DataFrame({"image": [body["dataframe_records"][0]["image"]]}))[0]
    assert served["error"] is None and len(served["products"]) == len(crops)
    assert [(p["box"], p["sku"]) for p in served["products"]] == [(p["box"], p["sku"]) for p in local["products"]]
    assert served["counts"] == local["counts"]


def test_second_package_moves_the_alias_and_keeps_the_old_version(pipeline):
    """A second package run, recognizer only (package.detector: none): a new version under the alias;
    the old one still loads and detects."""
    import pandas as pd

    repo, _ = pipeline
    client = _registry(repo)
    before = int(client.get_model_version_by_alias(MODEL, "champion").version)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["package"]["detector"] = "none"
    write_params(repo / "params.yaml", params)
    run([BIN / "python", "stages/package.py"], repo)  # the stage reads only mlflow, detector, crop and package
    after = client.get_model_version_by_alias(MODEL, "champion")
    assert int(after.version) == before + 1
    path, crops, _, cell = _test_image_with_products(repo)
    frame = pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode()]})
    [whole] = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(frame)
    assert [(p["box"], p["detector_score"]) for p in whole["products"]] == [([0, 0, whole["width"], whole["height"]], None)]
    [old] = mlflow.pyfunc.load_model(f"models:/{MODEL}/{before}").predict(frame)
    assert old["error"] is None and len(old["products"]) == len(crops)
    # Each version comes from its package run, tagged like every stage and linked to its source runs.
    runs = mlflow.search_runs(experiment_names=["skulab"], filter_string="tags.`dvc.stage` = 'package'", order_by=["start_time DESC"])
    newest, previous = runs.iloc[0], runs.iloc[1]
    assert after.run_id == newest["run_id"] and client.get_model_version(MODEL, str(before)).run_id == previous["run_id"]
    assert newest["tags.params.hash"] != previous["tags.params.hash"] and newest["tags.dataset.hash"] != "none"
    cell_run = json.loads((repo / f"metrics/recognizer/{cell}/cell.json").read_text())["run_id"]
    assert newest["tags.source.recognizer_run_id"] == after.tags["source.recognizer_run_id"] == cell_run
    assert "source.detector" not in after.tags
    detector = previous["tags.source.detector"]
    assert previous["tags.source.detector_run_id"] == json.loads((repo / f"metrics/detector/{detector}/final.json").read_text())["run_id"]

"""The packaged model's parts without a trained pipeline: params, prototypes and the reject threshold,
a recognizer-only model (whole images, given boxes, bad inputs, unknown), its pyfunc form and
`skulab predict`. The package stage itself, the registry and the served endpoint run on the tiny
trained pipeline in test_e2e.py."""

import base64
import io
import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO, deep_merge, repo_params, write_params
from skulab.cli import main as skulab_main
from skulab.errors import SkulabError
from skulab.params import load_params
from skulab.recognition import evaluation
from skulab.recognition.head import Recognizer
from skulab.serving.build import MODEL_CODE, calibrate_reject, class_prototypes, pinned_requirements, shareable_uri
from skulab.tracking import stage_run
from skulab.serving.predictor import SETTINGS_FORMAT, UNKNOWN, ImageInput, Predictor
from skulab.serving.pyfunc import request_frame, signature

CLASSES = ["cola", "fanta", "sprite"]


@pytest.mark.parametrize(
    "override,expected",
    [
        ({"detector": "yolo"}, "package.detector: unknown detector 'yolo'; allowed: best, none, faster_rcnn"),
        ({"recognizer": "baseline"}, "package.recognizer: String should match pattern"),
        ({"recognizer": "nope-0"}, "package.recognizer: unknown variant 'nope'"),
        ({"recognizer": "baseline-7"}, "package.recognizer: seed 7 is not in recognizer.seeds"),
        ({"alias": "latest"}, "package.alias: 'latest' is reserved by the MLflow registry"),
        ({"reject": 0.7}, "package.reject: Input should be less than 0.5"),
        ({"top_k": 0}, "package.top_k: Input should be greater than or equal to 1"),
        ({"thresh": 1}, "package.thresh: unknown key"),
    ],
)
def test_package_params_errors_name_the_key(tmp_path, override, expected):
    path = write_params(tmp_path / "params.yaml", deep_merge(repo_params(), {"package": override}))
    with pytest.raises(SkulabError) as exc:
        load_params(path)
    assert expected in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("package_detector, crop_detector, threshold, refused", [
    ("faster_rcnn", "best", "auto", True),  # best is cascade_rcnn: its auto threshold is not faster_rcnn's
    ("best", "none", "auto", True),  # no threshold was chosen on any detector's boxes
    ("best", "best", "auto", False),
    ("cascade_rcnn", "cascade_rcnn", "auto", False),
    ("faster_rcnn", "best", 0.5, False),  # a fixed threshold is the same for every detector
    ("none", "best", "auto", False),
])
def test_package_refuses_an_auto_threshold_chosen_for_another_detector(tmp_path, monkeypatch, package_detector, crop_detector, threshold, refused):
    from skulab.serving.build import Parts

    overrides = {"package": {"detector": package_detector}, "crop": {"detector": crop_detector, "score_threshold": threshold}}
    params = load_params(write_params(tmp_path / "params.yaml", deep_merge(repo_params(), overrides)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/card.json").write_text(json.dumps({"task": "detection"}))
    cropped_with = "none" if crop_detector == "none" else "cascade_rcnn"
    stats = {"dataset_hash": "h", "stored_size": 74, "test_detector": cropped_with}
    (tmp_path / "data/crops").mkdir(parents=True)
    (tmp_path / "data/crops/stats.json").write_text(json.dumps(stats))
    for name, mAP in (("faster_rcnn", 0.5), ("cascade_rcnn", 0.7), ("retinanet", 0.2), ("fcos", 0.3)):
        (tmp_path / "metrics/detector" / name).mkdir(parents=True)
        (tmp_path / "metrics/detector" / name / "final.json").write_text(json.dumps({"val_bbox_mAP": mAP}))
    with pytest.raises(SkulabError) as exc:
        Parts(params)
    message = str(exc.value)
    if refused:
        assert message.startswith(f"package.detector: {package_detector} packages ") and "crop.score_threshold: auto" in message
        assert "\n" not in message
    else:  # past the check: the next thing missing is a trained cell's files
        assert "missing; run" in message and "package.detector" not in message


def test_requirements_are_pinned_from_the_lock_file():
    requirements = pinned_requirements(REPO / "requirements.lock")
    lock = {line.strip() for line in open(REPO / "requirements.lock") if "==" in line}
    assert {"torch==2.14.1", "mmdet==3.3.0", "mlflow==3.17.2"} <= set(requirements)
    assert all(r in lock for r in requirements if "==" in r and not r.startswith("mmcv"))
    assert requirements[-1].startswith("-c ") and requirements[-1].endswith("requirements.lock")
    assert any(r.startswith("mmcv==") for r in requirements)


def test_stored_prototypes_give_the_cells_similarities():
    torch.manual_seed(0)
    gallery, labels, queries = torch.randn(30, 8), torch.arange(30) % 3, torch.randn(5, 8)
    prototypes = class_prototypes(gallery, labels, 3)
    direct = evaluation.prototype_similarities(gallery, labels, queries, 3)
    stored = evaluation.prototype_similarities(prototypes, torch.arange(3), queries, 3)
    assert torch.allclose(direct, stored, atol=1e-6)


def test_reject_threshold_is_the_val_quantile():
    similarities = torch.linspace(0, 1, 101)
    assert calibrate_reject(similarities, 0) is None
    threshold = calibrate_reject(similarities, 0.05)
    assert threshold == pytest.approx(0.05)
    assert float((similarities < threshold).float().mean()) == pytest.approx(0.05, abs=0.011)


def _image(width=48, height=40, seed=0, fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _settings(threshold=None) -> dict:
    return {
        "format": SETTINGS_FORMAT,
        "class_names": CLASSES,
        "detector": None,
        "recognizer": {"cell": "t-0", "backbone": "mobilenetv3_small", "embedding_dim": 16, "image_size": 32, "loss": {"ce": 1.0}, "has_classifier": True},
        "crop": {"padding": 0.05, "score_threshold": 0.3, "max_detections": 100, "min_box_size": 8, "stored_size": 37},
        "reject": {"threshold": threshold, "share": 0.01},
        "top_k": 2,
        "batch_size": 2,
    }


@pytest.fixture(scope="module")
def recognizer_only(tmp_path_factory):
    """A recognizer-only package of an untrained recognizer: its files, and the Predictor on them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("package")
    state = Recognizer("mobilenetv3_small", len(CLASSES), 16).state_dict()
    files = {"settings": root / "shelf.json", "prototypes": root / "prototypes.pt", "recognizer": root / "recognizer.pt"}
    files["settings"].write_text(json.dumps(_settings()))
    torch.save(F.normalize(torch.randn(len(CLASSES), 16), dim=1), files["prototypes"])
    torch.save(state, files["recognizer"])
    files = {name: str(path) for name, path in files.items()}
    return files, Predictor.load(files, device="cpu")


def test_recognizer_only_names_whole_images_and_given_boxes(recognizer_only):
    _, predictor = recognizer_only
    whole, boxed = predictor.predict_images([ImageInput(_image()), ImageInput(_image(seed=1), boxes=[[0, 0, 20, 20], [10, 5, 30, 30]])])
    assert whole["error"] is None and (whole["width"], whole["height"]) == (48, 40)
    [product] = whole["products"]
    assert product["box"] == [0, 0, 48, 40] and product["detector_score"] is None
    assert product["sku"] in CLASSES and product["sku"] == product["alternatives"][0]["sku"]
    assert len(product["alternatives"]) == 2 and product["alternatives"][0]["score"] >= product["alternatives"][1]["score"]
    assert product["confidence"] == product["alternatives"][0]["score"]
    assert [p["box"] for p in boxed["products"]] == [[0, 0, 20, 20], [10, 5, 30, 30]]
    assert sum(boxed["counts"].values()) == 2


def test_crops_are_recognized_together_as_one_by_one(recognizer_only):
    _, predictor = recognizer_only
    images = [ImageInput(_image(seed=s)) for s in range(3)]
    together = predictor.predict_images(images)
    alone = [predictor.predict_images([image])[0] for image in images]
    for a, b in zip(together, alone):
        assert a["products"][0]["sku"] == b["products"][0]["sku"]
        assert a["products"][0]["confidence"] == pytest.approx(b["products"][0]["confidence"], abs=1e-4)


def test_bad_inputs_fail_alone(recognizer_only):
    _, predictor = recognizer_only
    jpeg = _image(fmt="JPEG")
    records = predictor.predict_images(
        [ImageInput(b"just text\n"), ImageInput(jpeg[: len(jpeg) // 2]), ImageInput(_image(), boxes=[[60, 0, 5, 5]]), ImageInput(jpeg)]
    )
    assert records[0]["error"].startswith("not an image")
    assert records[1]["error"].startswith("corrupt or truncated image")
    assert "outside the 48x40 image" in records[2]["error"]
    assert [r["products"] for r in records[:3]] == [[], [], []]
    assert records[3]["error"] is None and len(records[3]["products"]) == 1


def test_reject_threshold_labels_unknown(recognizer_only):
    files, predictor = recognizer_only
    strict = Predictor(_settings(threshold=1.01), torch.load(files["prototypes"]), torch.load(files["recognizer"]))
    [record] = strict.predict_images([ImageInput(_image())])
    assert record["products"][0]["sku"] == UNKNOWN and record["counts"] == {UNKNOWN: 1}
    assert record["products"][0]["alternatives"][0]["sku"] in CLASSES  # the best guess is still listed


@pytest.fixture(scope="module")
def saved_model(recognizer_only, tmp_path_factory):
    files, _ = recognizer_only
    path = tmp_path_factory.mktemp("model") / "model"
    with warnings.catch_warnings():  # MLflow's own pandas deprecation noise while saving the input example
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            path, python_model=str(MODEL_CODE), artifacts=files, signature=signature(), input_example=request_frame([_image()]),
            pip_requirements=["torch==2.14.1"],
        )
    return path


def test_pyfunc_takes_base64_images_and_optional_boxes(saved_model):
    model = mlflow.pyfunc.load_model(str(saved_model))
    frame = pd.DataFrame(
        {
            "image": [base64.b64encode(_image()).decode(), "data:image/png;base64," + base64.b64encode(_image(seed=2)).decode(), "%%%"],
            "boxes": ["", "[[0, 0, 10, 10]]", ""],
        }
    )
    first, second, bad = model.predict(frame)
    assert first["image"] == 0 and len(first["products"]) == 1 and first["products"][0]["box"] == [0, 0, 48, 40]
    assert second["products"][0]["box"] == [0, 0, 10, 10]
    assert bad["error"] == "image: not valid base64"
    [only] = model.predict(request_frame([_image()]))  # no boxes column at all
    assert only["products"][0]["sku"] == first["products"][0]["sku"]


def test_predict_command_names_bad_files_and_goes_on(saved_model, tmp_path, capsys):
    folder = tmp_path / "shelf"
    folder.mkdir()
    jpeg = _image(fmt="JPEG")
    (folder / "a.jpg").write_bytes(jpeg)
    (folder / "b.png").write_bytes(_image(seed=3))
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    out, drawn = tmp_path / "results.jsonl", tmp_path / "drawn"
    with pytest.raises(SystemExit) as exit_code:
        skulab_main(["predict", str(folder), "--model", str(saved_model), "--out", str(out), "--draw", str(drawn), "--chunk", "3"])
    assert exit_code.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert any(f"{folder / 'corrupt.jpg'}: corrupt or truncated image" in line for line in errors)
    assert any(f"{folder / 'notes.txt'}: not an image" in line for line in errors)
    records = {json.loads(line)["path"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(records) == 4
    for good in ("a.jpg", "b.png"):
        record = records[str(folder / good)]
        assert record["error"] is None and len(record["products"]) == 1
        with Image.open(drawn / f"{good.split('.')[0]}.png") as picture:  # enlarged to be legible
            assert picture.width >= 800 and picture.width * 40 == picture.height * 48
    assert sorted(p.name for p in drawn.iterdir()) == ["a.png", "b.png"]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """An empty repo root with its own MLflow store."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("uri, shown", [
    (None, "sqlite:///mlflow.db"),  # the default store, as a user in the checkout exports it
    ("http://mlflow.lab:5000", "http://mlflow.lab:5000"),
    ("postgresql://skulab:s3cret@db.lab:5432/skulab", "postgresql://skulab:***@db.lab:5432/skulab"),
    ("https://user:tok@mlflow.lab/", "https://user:***@mlflow.lab/"),
])
def test_the_uri_a_model_card_names_is_the_store_in_use_without_its_password(repo, monkeypatch, uri, shown):
    if uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert shareable_uri() == shown


def test_the_default_store_stays_relative_once_a_run_has_set_mlflows_uri(repo):
    with stage_run("package", "skulab", {}, None):  # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI
        assert shareable_uri() == "sqlite:///mlflow.db"

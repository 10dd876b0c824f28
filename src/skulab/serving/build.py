"""The `package` stage: the winning detector and recognizer cells as one registered MLflow pyfunc model.

1. Choose the parts: the detector with the best val mAP (`crop.choose_detector`, as the crop stage
   does) and the recognizer cell with the best validation ranking metric (metrics/summary.json:
   best_variant, best_seed), unless params name them. A classification dataset (class folders, no
   boxes) or `package.detector: none` gives a recognizer-only package.
2. Compute what the model carries besides the weights: the train-set class prototypes (the cell's
   own gallery: data/crops train split through `evaluation.embed`) and the reject threshold, the
   `package.reject` quantile of the val products' nearest-prototype similarity.
3. Log the pyfunc model in the stage's MLflow run `package` (tagged like every stage and linked to
   the two source runs), check that the logged model loads and answers its input example, register
   it, move the alias to the new version, and write models/package/model_card.md (also the model
   version's description in the registry).
"""

import importlib.metadata
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import skulab
from skulab import shelf
from skulab.detection import SELECT_METRIC as DETECTOR_SELECT_METRIC
from skulab.crop import choose_detector
from skulab.data.coco import load_card, load_split
from skulab.errors import SkulabError
from skulab.io import read_csv, read_json, write_json_atomic, write_text_atomic
from skulab.layout import CROPS, DETECTOR_METRICS, DETECTOR_MODELS, PACKAGE, PREPARED, RECOGNIZER_METRICS, RECOGNIZER_MODELS, SUMMARY_JSON
from skulab.params import Params
from skulab.recognition import evaluation
from skulab.recognition.augment import eval_transform
from skulab.recognition.data import load_crops
from skulab.recognition.head import DEFAULT_HEAD, Recognizer, build_recognizer
from skulab.recognition.losses import uses_classifier
from skulab.serving.predictor import SETTINGS_FORMAT, UNKNOWN
from skulab.serving.pyfunc import request_frame, signature
from skulab.summary import shelf_per_cell
from skulab.tracking import stage_run, store_root, tracking_uri

MODEL_CODE = Path(__file__).with_name("shelf_model.py")
LOCK_FILE = Path("requirements.lock")
# What the model imports at inference (its code travels with it); pins come from requirements.lock,
# which also goes in as pip constraints, so every transitive dependency is pinned too.
RUNTIME_PACKAGES = (
    "mlflow", "torch", "torchvision", "timm", "pytorch-metric-learning", "pytorch_optimizer", "scikit-learn", "scipy",
    "numpy", "pillow", "pandas", "opencv-python", "pydantic", "PyYAML", "tqdm", "mmengine", "mmdet", "pycocotools",
)
REGISTERED_DESCRIPTION = (
    "Shelf product recognition from the skulab ablation (stage `package`): detector + recognizer, the products and "
    "counts per SKU of each image. Each version's description is its model card; its tags name the source runs."
)
MMCV_NOTE = "mmcv has no wheel on PyPI: build it once with scripts/build_mmcv.sh (see the README) before installing these requirements"
CARD_VAL_METRICS = ("val_proto_acc", "val_top1", "val_precision_at_1", "val_map_at_r", "val_balanced_acc")
CARD_TEST_METRICS = (
    "test_proto_acc", "test_top1", "test_balanced_acc", "test_precision_at_1", "test_map_at_r",
    "test_gt_proto_acc", "test_gt_top1", "test_e2e_recall", "test_e2e_precision",
)
DETECTOR_CARD_METRICS = ("val_bbox_mAP", "test_bbox_mAP", "test_bbox_mAP_50", "test_bbox_mAP_75", "test_bbox_AR_100")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(lock: Path = LOCK_FILE) -> list[str]:
    """The model's pip requirements: its runtime packages at the lock file's versions, mmcv at the
    version built here, and the whole lock file as constraints."""
    if not lock.is_file():
        raise SkulabError(f"{lock}: missing; the package pins its requirements from it")
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name = line.split("==", 1)[0].split("[", 1)[0].strip()
            pins[_canonical(name)] = line
    missing = [name for name in RUNTIME_PACKAGES if _canonical(name) not in pins]
    if missing:
        raise SkulabError(f"{lock}: no pin for {', '.join(missing)}")
    try:
        mmcv = f"mmcv=={importlib.metadata.version('mmcv')}"
    except importlib.metadata.PackageNotFoundError:
        raise SkulabError("mmcv is not installed; run scripts/setup.sh") from None
    return [pins[_canonical(name)] for name in RUNTIME_PACKAGES] + [mmcv, f"-c {lock.resolve()}"]


def choose_recognizer(choice: str, summary_path: Path = SUMMARY_JSON) -> str:
    """The recognizer cell `<variant>-<seed>`: named in params, or the summary's best by the val ranking metric."""
    if choice != "best":
        return choice
    if not summary_path.is_file():
        raise SkulabError(f"{summary_path}: missing; run `dvc repro evaluate` first (package.recognizer: best)")
    summary = read_json(summary_path)
    if "best_seed" not in summary:
        raise SkulabError(f"{summary_path}: no best_seed (written by an older evaluate); run `dvc repro evaluate`")
    return f"{summary['best_variant']}-{summary['best_seed']}"


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise SkulabError(f"{path}: missing; run `dvc repro {stage}` first")
    return path


def class_prototypes(gallery: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The unit class means of unit gallery embeddings: evaluation.prototype_similarities' prototypes."""
    prototypes = torch.zeros(num_classes, gallery.shape[1]).index_add_(0, labels, F.normalize(gallery, dim=1))
    return F.normalize(prototypes, dim=1)


def calibrate_reject(similarities: torch.Tensor, share: float) -> float | None:
    """The nearest-prototype similarity below which `share` of the val products fall (None: never reject)."""
    if share <= 0 or len(similarities) == 0:
        return None
    return float(torch.quantile(similarities.double(), share))


def _rejected_share(similarities: list[float], threshold: float | None) -> float | None:
    if not similarities:
        return None
    if threshold is None:
        return 0.0
    return sum(s < threshold for s in similarities) / len(similarities)


class Parts:
    """The two source cells and everything read from them."""

    def __init__(self, params: Params):
        package = params.package
        card = load_card(PREPARED)
        self.task = card["task"]
        self.stats = read_json(_need(CROPS / "stats.json", "crop"))
        self.dataset_hash = self.stats["dataset_hash"]
        self.note = None
        if self.task != "detection" and package.detector != "none":
            self.note = f"the dataset has no boxes ({self.task}); packaging the recognizer alone (package.detector: {package.detector} ignored)"
            detector = None
        else:
            detector = choose_detector(package.detector, list(params.detector.variants), DETECTOR_METRICS)
        cropped_with = self.stats.get("test_detector", "none")
        if detector is not None and params.crop.score_threshold == "auto" and detector != cropped_with:
            # The model would keep the boxes of one detector above a threshold chosen for another's scores.
            raise SkulabError(
                f"package.detector: {package.detector} packages {detector}, but crop.score_threshold: auto was chosen on "
                f"the val boxes of {cropped_with} (crop.detector: {params.crop.detector}); give package.detector and "
                "crop.detector the same detector, or crop.score_threshold a number"
            )
        self.detector = detector
        if detector is not None:
            self.detector_config = params.detector.resolve(detector)
            self.detector_final = read_json(_need(DETECTOR_METRICS / detector / "final.json", f"train_detector@{detector}"))
            self.detector_dir = DETECTOR_MODELS / detector
            for name in ("config.py", "best.pth"):
                _need(self.detector_dir / name, f"train_detector@{detector}")
        self.cell = choose_recognizer(package.recognizer)
        stage = f"train_recognizer@{self.cell}"
        self.cell_info = read_json(_need(RECOGNIZER_METRICS / self.cell / "cell.json", stage))
        self.cell_final = read_json(_need(RECOGNIZER_METRICS / self.cell / "final.json", stage))
        self.checkpoint = torch.load(_need(RECOGNIZER_MODELS / self.cell / "best.pt", stage), map_location="cpu", weights_only=False)
        self.config = self.checkpoint["config"]
        self.class_names = list(self.checkpoint["class_names"])
        self.has_classifier = uses_classifier(self.config["loss"])

    def source_runs(self) -> dict[str, dict]:
        runs = {"recognizer": {"name": f"train_recognizer@{self.cell}", "run_id": self.cell_final.get("run_id") or self.cell_info.get("run_id")}}
        if self.detector is not None:
            runs["detector"] = {"name": f"train_detector@{self.detector}", "run_id": self.detector_final.get("run_id")}
        client = MlflowClient(tracking_uri())
        for run in runs.values():
            try:
                found = client.get_run(run["run_id"])
                run.update(commit=found.data.tags.get("git.commit", "unknown"), dirty=found.data.tags.get("git.dirty", "unknown"), experiment_id=found.info.experiment_id)
            except (MlflowException, TypeError):
                run.update(commit="unknown (run not in this MLflow store)", dirty="unknown", experiment_id=None)
        return runs


def shareable_uri() -> str:
    """The tracking URI as a user exports it to reach this store's runs and registry, fit for a model
    card: the checkout's default store as `sqlite:///mlflow.db`, any other without its password.
    (Not read back from MLFLOW_TRACKING_URI alone: mlflow.set_tracking_uri sets that variable too.)"""
    uri = tracking_uri()
    if uri == f"sqlite:///{store_root() / 'mlflow.db'}":
        return "sqlite:///mlflow.db"
    parts = urllib.parse.urlsplit(uri)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        uri = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return uri


def crop_settings(crop, stats: dict) -> dict:
    """How the crop stage cut the cell's crops: its params, with `auto` resolved to the threshold it chose on val."""
    fixed = 0.0 if crop.score_threshold == "auto" else crop.score_threshold  # auto without detector: nothing was thresholded
    threshold = stats.get("score_threshold", {}).get("value", fixed)
    return {"padding": crop.padding, "score_threshold": threshold, "max_detections": crop.max_detections, "min_box_size": crop.min_box_size, "stored_size": stats["stored_size"]}


def recognizer_from(parts: Parts) -> Recognizer:
    model = build_recognizer(parts.config, len(parts.class_names), pretrained="none")
    model.load_state_dict(parts.checkpoint["model"])
    return model.eval()


def build_artifacts(parts: Parts, params: Params, out: Path) -> tuple[dict[str, str], dict, dict]:
    """Write the model's files under `out`; return them by artifact name, the settings and the reject report."""
    crop, package = params.crop, params.package
    image_size = parts.config["image_size"]
    model = recognizer_from(parts)
    transform = eval_transform(image_size, parts.config.get("crop_pct", 1.0))
    train = load_crops(CROPS, "train")
    if train.class_names != parts.class_names:
        raise SkulabError(f"{CROPS}: its classes differ from those train_recognizer@{parts.cell} learnt; run `dvc repro`")
    gallery, _ = evaluation.embed(model, train.images, transform, parts.has_classifier)  # as the cell's own evaluation
    num_classes = len(parts.class_names)
    prototypes = class_prototypes(gallery, train.labels, num_classes)
    val = load_crops(CROPS, "val").products()
    val_features, _ = evaluation.embed(model, val.images, transform, parts.has_classifier)
    val_similarity = evaluation.prototype_similarities(prototypes, torch.arange(num_classes), val_features, num_classes).max(dim=1).values
    threshold = calibrate_reject(val_similarity, package.reject)
    reject = {"threshold": threshold, "share": package.reject, **reject_effect(parts, val_similarity.tolist(), threshold)}

    out.mkdir(parents=True, exist_ok=True)
    files = {"settings": out / "shelf.json", "prototypes": out / "prototypes.pt", "recognizer": out / "recognizer.pt"}
    torch.save(prototypes, files["prototypes"])
    torch.save(model.state_dict(), files["recognizer"])
    detector = None
    if parts.detector is not None:
        files["detector_config"] = out / "detector_config.py"
        files["detector_weights"] = out / "detector.pth"
        shutil.copyfile(parts.detector_dir / "config.py", files["detector_config"])
        weights = torch.load(parts.detector_dir / "best.pth", map_location="cpu", weights_only=False)  # this cell's own file
        classes = list((weights.get("meta") or {}).get("dataset_meta", {}).get("classes", ()))
        # Tensors and class names only, so that it loads weights-only (no pickled objects).
        torch.save({"state_dict": weights["state_dict"], "meta": {"dataset_meta": {"classes": classes}}}, files["detector_weights"])
        config = parts.detector_config
        detector = {
            "name": parts.detector, "config_file": config.config, "input_size": list(config.input_size),
            "class_aware": config.class_aware, "backbone_depth": config.backbone_depth,
        }
    settings = {
        "format": SETTINGS_FORMAT,
        "class_names": parts.class_names,
        "detector": detector,
        "recognizer": {
            "cell": parts.cell, "backbone": parts.config["backbone"], "head": parts.config.get("head", DEFAULT_HEAD), "embedding_dim": parts.config["embedding_dim"],
            "image_size": image_size, "crop_pct": parts.config.get("crop_pct", 1.0), "loss": parts.config["loss"], "has_classifier": parts.has_classifier,
        },
        "crop": crop_settings(crop, parts.stats),
        "reject": {"threshold": threshold, "share": package.reject},
        "top_k": package.top_k,
        "batch_size": package.batch_size,
    }
    write_json_atomic(files["settings"], settings)
    return {name: str(path) for name, path in files.items()}, settings, reject


def reject_effect(parts: Parts, val_similarity: list[float], threshold: float | None) -> dict:
    """What the threshold rejects: val products, and on test (the cell's test_predictions.csv) products
    and background crops (detections that match no product)."""
    rows = read_csv(RECOGNIZER_METRICS / parts.cell / "test_predictions.csv", ("label", "pred", "proto_similarity"))
    product_rows = [r for r in rows if int(r["label"]) >= 0]
    products = [float(r["proto_similarity"]) for r in product_rows]
    background = [float(r["proto_similarity"]) for r in rows if int(r["label"]) < 0]
    accepted = [r for r in product_rows if threshold is None or float(r["proto_similarity"]) >= threshold]
    rejected = [r for r in product_rows if threshold is not None and float(r["proto_similarity"]) < threshold]

    def accuracy(subset):
        return sum(r["label"] == r["pred"] for r in subset) / len(subset) if subset else None

    return {
        "val_products_rejected": _rejected_share(val_similarity, threshold),
        "test_products_rejected": _rejected_share(products, threshold),
        "test_background_rejected": _rejected_share(background, threshold),
        "test_background_crops": len(background),
        "test_product_crops": len(products),
        "test_accuracy": accuracy(product_rows),  # the head's answers on the test products
        "test_accuracy_accepted": accuracy(accepted),  # on those the threshold keeps
        "test_rejected_wrong": None if not rejected else 1 - accuracy(rejected),  # rejected products the head had wrong
    }


def shelf_with_reject(parts: Parts, threshold: float | None) -> dict | None:
    """Shelf mAP and count accuracy of the cell on the detector's test crops, as evaluate computes them,
    and the same with the crops below the reject threshold left out (None: test crops are ground truth)."""
    if parts.stats.get("test_detector", "none") == "none":
        return None
    variant, seed = parts.cell.rsplit("-", 1)
    plain = shelf_per_cell({variant: {int(seed): {}}}, RECOGNIZER_METRICS, PREPARED, CROPS)[variant][int(seed)]
    result = {"detector": parts.stats["test_detector"], "mAP": plain["mAP"], "mAP50": plain["mAP50"], "count_accuracy": plain["count_accuracy"]}
    if threshold is not None:
        gt = load_split(PREPARED, "test")
        manifest = read_csv(CROPS / "manifest.csv", ("crop", "split", "source_image", "x", "y", "w", "h", "score"))
        predictions = read_csv(RECOGNIZER_METRICS / parts.cell / "test_predictions.csv", (*shelf.PREDICTION_FIELDS, "proto_similarity"))
        detections = shelf.shelf_detections(gt, manifest, predictions, shelf.load_class_ids(CROPS))
        similarity = {p["crop"]: float(p["proto_similarity"]) for p in predictions}
        test_rows = [row for row in manifest if row["split"] == "test"]  # shelf_detections' order
        kept = [d for d, row in zip(detections, test_rows) if similarity[row["crop"]] >= threshold]
        scored = shelf.shelf_map(gt, kept)
        result |= {"mAP_reject": scored["mAP"], "mAP50_reject": scored["mAP50"], "count_accuracy_reject": shelf.count_accuracy(gt, kept)}
    return result


def _copy_code(out: Path) -> Path:
    """The skulab package as the model's code (without caches): the model loads wherever its requirements are installed."""
    source = Path(skulab.__file__).parent
    target = out / "skulab"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _example_image() -> Path:
    test = load_split(PREPARED, "test")
    return PREPARED / "images" / sorted(info["file_name"] for info in test["images"])[0]


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _run_link(run: dict) -> str:
    if run.get("experiment_id") is None:
        return f"`{run['run_id']}`"
    return f"[`{run['run_id']}`](#/experiments/{run['experiment_id']}/runs/{run['run_id']})"


def model_card(parts: Parts, params: Params, info: dict, settings: dict, reject: dict, shelf_metrics: dict | None, example: dict) -> str:
    runs = info["source_runs"]
    lines = [
        f"# Model card: {info['model_name']} version {info['version']} (alias `{info['alias']}`)",
        "",
        f"One MLflow pyfunc model: {'detector ' + parts.detector + ' + ' if parts.detector else ''}recognizer {parts.cell}, "
        f"packaged by the `package` stage in run `{info['run_id']}` (commit `{info['commit']}`, dirty: {info['dirty']}), dataset `{parts.dataset_hash[:16]}`.",
        "",
        f"- load: `mlflow.pyfunc.load_model(\"models:/{info['model_name']}@{info['alias']}\")` or `models:/{info['model_name']}/{info['version']}`",
        "- predict: `skulab predict IMAGE_OR_FOLDER... [--out results.jsonl] [--draw out_dir/]`",
        f"- serve: `MLFLOW_TRACKING_URI={info['tracking_uri']} mlflow models serve -m models:/{info['model_name']}@{info['alias']} --env-manager local -h 127.0.0.1 -p 5001`",
        "",
        "## Sources",
        "",
        "| part | cell | MLflow run | commit |",
        "|---|---|---|---|",
    ]
    for part, run in runs.items():
        lines.append(f"| {part} | `{run['name']}` | {_run_link(run)} | `{run['commit']}` (dirty: {run['dirty']}) |")
    if parts.note:
        lines += ["", f"Note: {parts.note}."]
    if parts.detector:
        config, final = parts.detector_config, parts.detector_final
        lines += [
            "",
            f"## Detector: {parts.detector}",
            "",
            f"`{config.config}`, ResNet-{config.backbone_depth}, {'class-aware' if config.class_aware else 'class-agnostic (one product class)'}, "
            f"input resized to fit {config.input_size[0]} x {config.input_size[1]} (aspect ratio kept); chosen by "
            f"{'the best val mAP' if params.package.detector == 'best' else 'package.detector'} (best epoch {final.get('best_epoch')}).",
            "",
            "| " + " | ".join(DETECTOR_CARD_METRICS) + " |",
            "|" + "---:|" * len(DETECTOR_CARD_METRICS),
            "| " + " | ".join(_fmt(final.get(m)) for m in DETECTOR_CARD_METRICS) + " |",
        ]
    cfg, final = parts.config, parts.cell_final
    lines += [
        "",
        f"## Recognizer: {parts.cell}",
        "",
        f"{cfg['backbone']}, embedding {cfg['embedding_dim']}, crops of {cfg['image_size']} x {cfg['image_size']} px, loss {cfg['loss']}, "
        f"{'classifier answers (softmax confidence)' if parts.has_classifier else 'nearest-prototype answers (confidence (1 + cosine) / 2)'}; "
        f"chosen by {'the best validation ranking metric (metrics/summary.json)' if params.package.recognizer == 'best' else 'package.recognizer'} "
        f"(best epoch {final.get('best_epoch')}). Test crops of the cell: {parts.cell_info.get('test_detector', 'none')}.",
        "",
    ]
    val = [m for m in CARD_VAL_METRICS if m in final]
    test = [m for m in CARD_TEST_METRICS if m in final]
    lines += ["| metric | " + " | ".join(val) + " |", "|---|" + "---:|" * len(val), "| val | " + " | ".join(_fmt(final[m]) for m in val) + " |"]
    lines += ["", "| " + " | ".join(test) + " |", "|" + "---:|" * len(test), "| " + " | ".join(_fmt(final[m]) for m in test) + " |"]
    lines += [
        "",
        "## End to end",
        "",
        f"`test_e2e_recall` (products named right / ground-truth boxes) {_fmt(final.get('test_e2e_recall'))}, "
        f"`test_e2e_precision` (products named right / test crops) {_fmt(final.get('test_e2e_precision'))}.",
    ]
    if shelf_metrics:
        lines += [
            "",
            f"Shelf metrics on the test images (boxes of {shelf_metrics['detector']}, named by this cell), as in reports/report.md, "
            "and with the crops below the reject threshold left out:",
            "",
            "| | shelf mAP | shelf mAP50 | count accuracy |",
            "|---|---:|---:|---:|",
            f"| every crop | {_fmt(shelf_metrics['mAP'])} | {_fmt(shelf_metrics['mAP50'])} | {_fmt(shelf_metrics['count_accuracy'])} |",
        ]
        if "mAP_reject" in shelf_metrics:
            lines.append(f"| unknown left out | {_fmt(shelf_metrics['mAP_reject'])} | {_fmt(shelf_metrics['mAP50_reject'])} | {_fmt(shelf_metrics['count_accuracy_reject'])} |")
    crop = settings["crop"]
    lines += [
        "",
        "## Crops and unknown products",
        "",
        f"Detections with score >= {crop['score_threshold']}, at most {crop['max_detections']} per image, none smaller than "
        f"{crop['min_box_size']} px, cut with padding {crop['padding']} (the crop stage's settings).",
        "",
    ]
    if reject["threshold"] is None:
        lines.append("No reject threshold (`package.reject: 0`): every crop is named as a known SKU.")
    else:
        lines += [
            f"A crop whose cosine similarity to its nearest train-set class prototype is below **{reject['threshold']:.4f}** is labelled "
            f"`{UNKNOWN}`: the similarity that {reject['share']:g} of the val products fall below (`package.reject`).",
            "",
            "| rejected | share |",
            "|---|---:|",
            f"| val products | {_fmt(reject['val_products_rejected'])} |",
            f"| test products ({reject['test_product_crops']} crops) | {_fmt(reject['test_products_rejected'])} |",
            f"| test background crops ({reject['test_background_crops']}) | {_fmt(reject['test_background_rejected'])} |",
            "",
            f"On the test products the recognizer names {_fmt(reject['test_accuracy'])} right; {_fmt(reject['test_accuracy_accepted'])} of those "
            f"it keeps, and it had {_fmt(reject['test_rejected_wrong'])} of those it rejects wrong.",
        ]
    lines += [
        "",
        "## Input and output",
        "",
        "Input: a DataFrame with a column `image` of base64-encoded image bytes and an optional column `boxes` "
        "(a JSON list of [x, y, w, h] pixel boxes to recognize instead of detecting). "
        "Output: per image `products` (box [x, y, w, h], detector_score, sku, confidence, similarity, alternatives) and `counts` per SKU. "
        f"The input example ({example['name']}) gives {len(example['products'])} products: "
        + ", ".join(f"{sku} x {n}" for sku, n in list(example["counts"].items())[:8])
        + (" ..." if len(example["counts"]) > 8 else "")
        + ".",
        "",
        f"Requirements: pinned from requirements.lock (also the pip constraints); {MMCV_NOTE}.",
        "",
        f"## Classes ({len(parts.class_names)})",
        "",
        ", ".join(f"`{name}`" for name in parts.class_names),
        "",
    ]
    return "\n".join(lines)


def package_stage(params: Params) -> dict:
    """Build, log, verify and register the model; write models/package/{model_card.md,package.json}."""
    package = params.package
    # Verifying the logged model downloads its artifacts several times, each with its own MLflow progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parts = Parts(params)
    if parts.note:
        print(f"package: {parts.note}")
    read = {
        "package": package,
        "crop": crop_settings(params.crop, parts.stats),
        "detector.variant_names": list(params.detector.variants),
    }
    if parts.detector is not None:
        read["detector"] = {"name": parts.detector, **parts.detector_config.model_dump(mode="json")}
    with stage_run("package", params.mlflow.experiment, read, parts.dataset_hash) as run, tempfile.TemporaryDirectory(prefix="skulab-package-") as tmp:
        runs = parts.source_runs()
        source_tags = {"source.recognizer": parts.cell, "source.recognizer_run_id": runs["recognizer"]["run_id"]}
        if parts.detector:
            source_tags |= {"source.detector": parts.detector, "source.detector_run_id": runs["detector"]["run_id"]}
        mlflow.set_tags(source_tags)
        files, settings, reject = build_artifacts(parts, params, Path(tmp) / "artifacts")
        example_image = _example_image()
        example = request_frame([example_image.read_bytes()])
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),  # models from code: nothing pickled
            artifacts=files,
            code_paths=[str(_copy_code(Path(tmp) / "code"))],
            pip_requirements=pinned_requirements(),
            signature=signature(),
            input_example=example,
            metadata={"skulab": {**source_tags, "classes": len(parts.class_names), "reject_threshold": reject["threshold"], "mmcv": MMCV_NOTE}},
        )
        # MLflow only warns when the input example fails; a model that cannot answer it is not registered.
        answer = mlflow.pyfunc.load_model(info.model_uri).predict(example)
        if len(answer) != 1 or answer[0]["error"] is not None:
            raise SkulabError(f"the logged model {info.model_uri} cannot answer its input example {example_image}: {answer}")
        client = MlflowClient(tracking_uri())
        version = mlflow.register_model(info.model_uri, package.model_name, tags=source_tags).version
        client.set_registered_model_alias(package.model_name, package.alias, version)
        if not client.get_registered_model(package.model_name).description:
            client.update_registered_model(package.model_name, description=REGISTERED_DESCRIPTION)
        tags = run.data.tags
        summary = {
            "model_name": package.model_name,
            "version": int(version),
            "alias": package.alias,
            "model_uri": f"models:/{package.model_name}/{version}",
            "tracking_uri": shareable_uri(),  # the registry that holds it
            "logged_model_uri": info.model_uri,
            "run_id": run.info.run_id,
            "commit": tags.get("git.commit", "unknown"),
            "dirty": tags.get("git.dirty", "unknown"),
            "detector": parts.detector or "none",
            "recognizer": parts.cell,
            "source_runs": runs,
            "classes": len(parts.class_names),
            "reject_threshold": reject["threshold"],
            "reject_share": reject["share"],
            **{k: v for k, v in reject.items() if k not in ("threshold", "share")},
        }
        shelf_metrics = shelf_with_reject(parts, reject["threshold"])
        if shelf_metrics:
            summary["shelf"] = shelf_metrics
        card = model_card(parts, params, summary, settings, reject, shelf_metrics, {"name": example_image.name, **answer[0]})
        client.update_model_version(package.model_name, version, description=card)
        PACKAGE.mkdir(parents=True, exist_ok=True)
        write_text_atomic(PACKAGE / "model_card.md", card)
        write_json_atomic(PACKAGE / "package.json", summary)
        for name in ("model_card.md", "package.json"):
            mlflow.log_artifact(str(PACKAGE / name), artifact_path="package")
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "version"}
        numbers |= {f"shelf_{k}": v for k, v in (shelf_metrics or {}).items() if isinstance(v, float)}
        if parts.detector:
            numbers[f"detector_{DETECTOR_SELECT_METRIC}"] = parts.detector_final[DETECTOR_SELECT_METRIC]
        numbers |= {f"recognizer_{m}": parts.cell_final[m] for m in (*CARD_VAL_METRICS, *CARD_TEST_METRICS) if m in parts.cell_final}
        mlflow.log_metrics(numbers)
        mlflow.set_tag("registered_model", f"{package.model_name}/{version}")
        print(
            f"package: {parts.detector or 'no detector'} + {parts.cell} registered as models:/{package.model_name}/{version} "
            f"(alias {package.alias}); card: {PACKAGE / 'model_card.md'}"
        )
        return summary

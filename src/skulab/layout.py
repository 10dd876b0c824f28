"""Where each stage reads and writes, relative to the repo root (mirrors dvc.yaml).

tests/test_layout.py checks these against dvc.yaml's deps, outs, metrics and plots.
"""

from pathlib import Path

SPLITS = ("train", "val", "test")
GT_TEST = "test_gt"  # ground-truth test crops, cropped beside the detected ones when a detector gives the test crops
PREPARED = Path("data/prepared")
CROPS = Path("data/crops")
DETECTIONS = Path("data/detections")
DETECTOR_MODELS = Path("models/detector")
RECOGNIZER_MODELS = Path("models/recognizer")
PACKAGE = Path("models/package")  # the package stage's model card and package.json
METRICS = Path("metrics")
DETECTOR_METRICS = METRICS / "detector"
RECOGNIZER_METRICS = METRICS / "recognizer"
THRESHOLD_FIGURE = METRICS / "crop" / "score_threshold.png"  # the crop stage's score threshold figure
SUMMARY_JSON = METRICS / "summary.json"
SUMMARY_MD = METRICS / "summary.md"
REPORTS = Path("reports")  # the evaluate stage's report.md, its figures and curve tables, as one output
REPORT_MD = REPORTS / "report.md"
RECOGNIZER_CURVES = REPORTS / "recognizer_val_curves.csv"  # long tables for dvc.yaml's top-level plots
DETECTOR_CURVES = REPORTS / "detector_val_curves.csv"


def crop_store(crops: Path, split: str) -> Path:
    """The crop stage's decoded crops of one split: N x 3 x S x S uint8 (.npy), rows in manifest order."""
    return crops / f"{split}.npy"


def annotations_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"{split}.json"


def card_file(root: Path = PREPARED) -> Path:
    return root / "card.json"


def import_report_file(root: Path = PREPARED) -> Path:
    """The prepare stage's import report: what it skipped, dropped or found absent from a split."""
    return root / "report.json"


def recognizer_cell(variant: str, seed: int) -> str:
    """The DVC matrix cell key (train_recognizer@<variant>-<seed>) and its output folder name."""
    return f"{variant}-{seed}"

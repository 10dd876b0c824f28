"""Where each stage reads and writes, relative to the repo root (mirrors dvc.yaml)."""

from pathlib import Path

SPLITS = ("train", "val", "test")
GT_TEST = "test_gt"  # ground-truth test crops, cropped beside the detected ones when a detector gives the test crops
PREPARED = Path("data/prepared")
CROPS = Path("data/crops")
DETECTIONS = Path("data/detections")
DETECTOR_MODELS = Path("models/detector")
RECOGNIZER_MODELS = Path("models/recognizer")
METRICS = Path("metrics")
DETECTOR_METRICS = METRICS / "detector"
RECOGNIZER_METRICS = METRICS / "recognizer"


def crop_store(crops: Path, split: str) -> Path:
    """The crop stage's decoded crops of one split: N x 3 x S x S uint8 (.npy), rows in manifest order."""
    return crops / f"{split}.npy"


def annotations_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"{split}.json"


def card_file(root: Path = PREPARED) -> Path:
    return root / "card.json"


def recognizer_cell(variant: str, seed: int) -> str:
    """The DVC matrix cell key (train_recognizer@<variant>-<seed>) and its output folder name."""
    return f"{variant}-{seed}"

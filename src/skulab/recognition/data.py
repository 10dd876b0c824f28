"""Crop datasets memory-mapped from the crop stage's store: decoded once, augmented per sample."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from skulab.errors import SkulabError
from skulab.layout import crop_store


@dataclass
class CropSet:
    images: torch.Tensor  # N x 3 x S x S, uint8, memory-mapped (pages are read when used)
    labels: torch.Tensor  # N, int64 class index; -1 for a detection that matched no product
    class_names: list[str]  # index -> name
    crops: list[str]  # each crop's manifest name

    def products(self) -> "CropSet":
        """The crops showing a known product (detections matched to a ground-truth box)."""
        known = self.labels >= 0
        names = [name for name, keep in zip(self.crops, known.tolist()) if keep]
        return CropSet(self.images[known], self.labels[known], self.class_names, names)


def load_classes(crops: Path) -> dict[int, str]:
    path = crops / "classes.json"
    try:
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        raise SkulabError(f"{path}: missing; run the crop stage first") from None


def load_crops(crops: Path, split: str) -> CropSet:
    """All crops of one split, as stored by the crop stage (squares of crop.stored_size)."""
    classes = load_classes(crops)
    index_of = {class_id: i for i, class_id in enumerate(sorted(classes))}
    manifest = crops / "manifest.csv"
    try:
        with open(manifest, newline="") as f:
            rows = [row for row in csv.DictReader(f) if row["split"] == split]
    except FileNotFoundError:
        raise SkulabError(f"{manifest}: missing; run the crop stage first") from None
    if not rows:
        raise SkulabError(f"{manifest}: split '{split}' has no crops")
    store = crop_store(crops, split)
    try:
        # copy-on-write: a writable view without reading the file into memory (torch wants writable arrays)
        images = np.load(store, mmap_mode="c")
    except FileNotFoundError:
        raise SkulabError(f"{store}: missing; run the crop stage again (dvc repro crop)") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:2] != (len(rows), 3) or images.shape[2] != images.shape[3]:
        raise SkulabError(f"{store}: expected {len(rows)} x 3 x S x S uint8 crops (the manifest's {split} rows), got {images.shape} {images.dtype}; rerun the crop stage")
    labels = torch.tensor([index_of.get(int(row["class_id"]), -1) for row in rows], dtype=torch.int64)
    names = [classes[class_id] for class_id in sorted(classes)]
    return CropSet(torch.from_numpy(images), labels, names, [row["crop"] for row in rows])


class TransformedCrops(Dataset):
    def __init__(self, crops: CropSet, transform):
        self.crops, self.transform = crops, transform

    def __len__(self) -> int:
        return len(self.crops.labels)

    def __getitem__(self, index: int):
        return self.transform(self.crops.images[index]), self.crops.labels[index]

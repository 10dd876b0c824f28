"""Crop datasets held in memory as uint8 tensors: decoded once, augmented per sample."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from skulab.errors import SkulabError


@dataclass
class CropSet:
    images: torch.Tensor  # N x 3 x S x S, uint8
    labels: torch.Tensor  # N, int64 class index; -1 for a detection that matched no product
    class_names: list[str]  # index -> name
    crops: list[str]  # each crop's manifest name (its file under images/)

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


def load_split(crops: Path, split: str, storage_size: int) -> CropSet:
    """All crops of one split, resized once to `storage_size` squares."""
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
    images = np.empty((len(rows), storage_size, storage_size, 3), dtype=np.uint8)
    for i, row in enumerate(tqdm(rows, desc=f"load {split} crops", unit="crop", leave=False)):
        with Image.open(crops / "images" / row["crop"]) as image:
            images[i] = np.asarray(image.convert("RGB").resize((storage_size, storage_size), Image.BILINEAR))
    labels = torch.tensor([index_of.get(int(row["class_id"]), -1) for row in rows], dtype=torch.int64)
    names = [classes[class_id] for class_id in sorted(classes)]
    crops_names = [row["crop"] for row in rows]
    return CropSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, names, crops_names)


class TransformedCrops(Dataset):
    def __init__(self, crops: CropSet, transform):
        self.crops, self.transform = crops, transform

    def __len__(self) -> int:
        return len(self.crops.labels)

    def __getitem__(self, index: int):
        return self.transform(self.crops.images[index]), self.crops.labels[index]

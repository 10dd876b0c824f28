"""The crop stage: cut every product out of its box into a crop dataset with a manifest.

All splits are cropped from ground-truth boxes. The manifest records where each crop came from
(source image, box, class, split) and its origin, so detector crops can join the same table.
"""

import csv
import io
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from skulab.data.coco import class_names, load_split
from skulab.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic
from skulab.layout import SPLITS
from skulab.params import CropParams

MANIFEST_FIELDS = ("crop", "split", "source_image", "x", "y", "w", "h", "class_id", "class_name", "origin", "detector", "score", "iou")


def padded_box(x: float, y: float, w: float, h: float, padding: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `padding` of its size on each side, clipped to the image, as (left, top, right, bottom)."""
    px, py = w * padding, h * padding
    left, top = max(0, round(x - px)), max(0, round(y - py))
    right, bottom = min(width, round(x + w + px)), min(height, round(y + h + py))
    return left, top, right, bottom


def crop_split(prepared: Path, out: Path, split: str, params: CropParams) -> tuple[list[dict], int]:
    coco = load_split(prepared, split)
    names = class_names(coco)
    images = {info["id"]: info for info in coco["images"]}
    rows, too_small = [], 0
    anns = sorted(coco["annotations"], key=lambda a: (a["image_id"], a["id"]))
    current_id, image = None, None
    for ann in tqdm(anns, desc=f"crop {split}", unit="box"):
        x, y, w, h = ann["bbox"]
        if min(w, h) < params.min_box_size:
            too_small += 1
            continue
        info = images[ann["image_id"]]
        if ann["image_id"] != current_id:
            image = Image.open(prepared / "images" / info["file_name"]).convert("RGB")
            current_id = ann["image_id"]
        box = padded_box(x, y, w, h, params.padding, image.width, image.height)
        crop_name = f"{split}/{ann['id']:07d}.png"
        buffer = io.BytesIO()
        image.crop(box).save(buffer, format="PNG")
        write_bytes_atomic(out / "images" / crop_name, buffer.getvalue())
        rows.append(
            {
                "crop": crop_name,
                "split": split,
                "source_image": info["file_name"],
                "x": x, "y": y, "w": w, "h": h,
                "class_id": ann["category_id"],
                "class_name": names[ann["category_id"]],
                "origin": "ground_truth",
                "detector": "", "score": "", "iou": "",
            }
        )
    return rows, too_small


def crop_dataset(prepared: Path, out: Path, params: CropParams, dataset_hash: str) -> dict:
    """Write crops, manifest.csv, classes.json and stats.json to `out` atomically; return the stats."""
    stats: dict = {"dataset_hash": dataset_hash}
    with atomic_path(out) as root:
        rows = []
        for split in SPLITS:
            split_rows, too_small = crop_split(prepared, root, split, params)
            rows += split_rows
            stats[split] = {"crops": len(split_rows), "skipped_too_small": too_small}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(root / "manifest.csv", buffer.getvalue())
        names = class_names(load_split(prepared, "train"))
        write_json_atomic(root / "classes.json", {str(k): v for k, v in sorted(names.items())})
        write_json_atomic(root / "stats.json", stats)
    return stats

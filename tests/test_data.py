"""Synthetic generator and crop stage: deterministic, look-alike SKUs, honest manifests."""

import csv
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import deep_merge
from skulab.crop import crop_dataset, padded_box
from skulab.data.coco import load_split
from skulab.data.prepare import CONTACT_WIDTH, contact_sheet_images, prepare
from skulab.data.synthetic import make_skus
from skulab.io import hash_files
from skulab.params import PrepareParams
from skulab.plots import plot_contact_sheet


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny_params, tmp_path):
    first, _ = prepare(tiny_params.prepare, tmp_path / "a")
    second, _ = prepare(tiny_params.prepare, tmp_path / "b")
    assert first["hash"] == second["hash"] == json.loads((tmp_path / "a/card.json").read_text())["hash"]
    assert hash_files(tmp_path / "a") == hash_files(tmp_path / "b")
    reseeded = PrepareParams.model_validate(deep_merge(tiny_params.prepare.model_dump(), {"seed": 1}))
    assert prepare(reseeded, tmp_path / "c")[0]["hash"] != first["hash"]


def test_card_counts_match_annotations(tiny_params, tiny_crops):
    prepared = tiny_crops.parent / "prepared"
    card = json.loads((prepared / "card.json").read_text())
    assert len(card["classes"]) == 6
    for split, counts in card["splits"].items():
        coco = json.loads((prepared / "annotations" / f"{split}.json").read_text())
        assert counts["images"] == len(coco["images"])
        assert counts["boxes"] == len(coco["annotations"]) == sum(counts["per_class"].values())
        assert counts["left_out"] == {"crowd": 0, "difficult": 0}  # synthetic scenes hold only products
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            image = coco["images"][ann["image_id"] - 1]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= image["width"] and y + h <= image["height"]
    assert Image.open(prepared / "contact_sheet.png").size[0] > 0
    assert "| train |" in (prepared / "card.md").read_text()



def test_contact_sheet_is_prepare_reading_and_plots_drawing(tiny_crops, tmp_path):
    """prepare reads the first images and their boxes one at a time; plots.py draws and tiles them."""
    prepared = tiny_crops.parent / "prepared"
    images = contact_sheet_images(prepared, count=4)
    assert isinstance(images, Iterator)  # lazy: one full-size image held at a time
    items = list(images)
    coco = load_split(prepared, "train")
    expected = [sorted(a["category_id"] for a in coco["annotations"] if a["image_id"] == info["id"]) for info in coco["images"][:4]]
    assert [sorted(box[4] for box in boxes) for _, boxes in items] == expected
    plot_contact_sheet(items, tmp_path / "sheet.png", 64)
    width, height = Image.open(tmp_path / "sheet.png").size
    assert width <= 3 * 64 and height <= 2 * 64 and max(i.width for i, _ in items) <= 64  # 3 a row, each shrunk
    plot_contact_sheet(contact_sheet_images(prepared), tmp_path / "again.png", CONTACT_WIDTH)
    assert (tmp_path / "again.png").read_bytes() == (prepared / "contact_sheet.png").read_bytes()

def test_lookalike_groups_share_shape_and_palette_but_not_label():
    skus = make_skus(23, 2, seed=0)
    assert len({s.name for s in skus}) == 23
    for a, b in zip(skus[0::2], skus[1::2]):
        assert (a.shape, a.body, a.accent) == (b.shape, b.body, b.accent)
        assert (a.logo, a.stripes, a.text_bits) != (b.logo, b.stripes, b.text_bits)


@pytest.mark.parametrize(
    "box,padding,expected",
    [
        ((10, 20, 30, 40), 0.0, (10, 20, 40, 60)),
        ((10, 20, 30, 40), 0.1, (7, 16, 43, 64)),
        ((0, 0, 30, 40), 0.5, (0, 0, 45, 60)),  # clipped at the top-left
        ((90, 80, 10, 20), 0.5, (85, 70, 100, 100)),  # clipped at the bottom-right
    ],
)
def test_padded_box(box, padding, expected):
    assert padded_box(*box, padding, 100, 100) == expected


def test_crop_manifest_covers_every_box(tiny_params, tiny_crops):
    prepared = tiny_crops.parent / "prepared"
    with open(tiny_crops / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    total = sum(len(json.loads((prepared / "annotations" / f"{s}.json").read_text())["annotations"]) for s in ("train", "val", "test"))
    assert len(rows) == total
    classes = json.loads((tiny_crops / "classes.json").read_text())
    for row in rows[:20]:
        assert classes[row["class_id"]] == row["class_name"]
        assert row["origin"] == "ground_truth"
    stored = {split: np.load(tiny_crops / f"{split}.npy", mmap_mode="r") for split in ("train", "val", "test")}
    assert {split: len(array) for split, array in stored.items()} == {s: sum(r["split"] == s for r in rows) for s in stored}
    assert all(array.shape[1:] == (3, tiny_params.crop.stored_size, tiny_params.crop.stored_size) for array in stored.values())


def test_small_boxes_are_counted_not_cropped(tiny_params, tiny_crops, tmp_path):
    strict = tiny_params.crop.model_copy(update={"min_box_size": 10_000})
    stats = crop_dataset(tiny_crops.parent / "prepared", tmp_path / "crops", strict, "hash")
    assert all(stats[s]["crops"] == 0 and stats[s]["skipped_too_small"] > 0 for s in ("train", "val", "test"))

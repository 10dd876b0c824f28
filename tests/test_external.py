"""User datasets in every format: round trips of boxes, splits, and every kind of bad item."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from conftest import REPO, TINY, deep_merge, repo_params, write_params
from skulab.data.external import assign_splits
from skulab.data.prepare import prepare
from skulab.data.sources import Box, Item
from skulab.errors import SkulabError
from skulab.params import PrepareParams

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def source_coco(tiny_crops) -> dict[str, dict]:
    """The tiny synthetic dataset's COCO files: the ground truth every fixture is written from."""
    prepared = tiny_crops.parent / "prepared"
    return {split: json.loads((prepared / "annotations" / f"{split}.json").read_text()) for split in SPLITS}


@pytest.fixture(scope="module")
def prepared_root(tiny_crops) -> Path:
    return tiny_crops.parent / "prepared"


def _boxes(coco: dict) -> Counter:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return Counter((names[a["category_id"]], *(round(v) for v in a["bbox"])) for a in coco["annotations"])


def _params(tiny_params, source: str, path: Path, **external) -> PrepareParams:
    data = deep_merge(tiny_params.prepare.model_dump(), {"source": source, "external": {"path": str(path), **external}})
    return PrepareParams.model_validate(data)


def _imported(out: Path) -> dict[str, dict]:
    return {split: json.loads((out / "annotations" / f"{split}.json").read_text()) for split in SPLITS}


# ---- writers: the tiny dataset in each format ---------------------------------------------------


def write_coco(root: Path, source: dict, prepared: Path, single_file: bool = False) -> Path:
    shutil.copytree(prepared / "images", root / "images")
    (root / "annotations").mkdir(parents=True)
    if single_file:
        merged = {"images": [], "annotations": [], "categories": source["train"]["categories"]}
        for split in SPLITS:
            offset = len(merged["images"])
            merged["images"] += [{**im, "id": im["id"] + offset} for im in source[split]["images"]]
            merged["annotations"] += [{**a, "id": len(merged["annotations"]) + i + 1, "image_id": a["image_id"] + offset} for i, a in enumerate(source[split]["annotations"])]
        (root / "annotations" / "all.json").write_text(json.dumps(merged))
    else:
        for split in SPLITS:
            (root / "annotations" / f"{split}.json").write_text(json.dumps(source[split]))
    return root


def write_voc(root: Path, source: dict, prepared: Path) -> Path:
    """VOC's own convention, 1-based inclusive corners (pinned by test_voc_hand_made_file_imports_exactly)."""
    for split in SPLITS:
        names = {c["id"]: c["name"] for c in source[split]["categories"]}
        stems = []
        for image in source[split]["images"]:
            stem = f"{split}_{image['id']:04d}"
            stems.append(stem)
            (root / "JPEGImages" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(prepared / "images" / image["file_name"], root / "JPEGImages" / split / f"{stem}.jpg")
            ann = ET.Element("annotation")
            ET.SubElement(ann, "filename").text = f"{stem}.jpg"
            for a in (a for a in source[split]["annotations"] if a["image_id"] == image["id"]):
                obj = ET.SubElement(ann, "object")
                ET.SubElement(obj, "name").text = names[a["category_id"]]
                box = ET.SubElement(obj, "bndbox")
                x, y, w, h = a["bbox"]
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x + 1, y + 1, x + w, y + h)):
                    ET.SubElement(box, key).text = str(value)
            (root / "Annotations" / split).mkdir(parents=True, exist_ok=True)  # class-style subfolders
            ET.ElementTree(ann).write(root / "Annotations" / split / f"{stem}.xml")
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def write_yolo(root: Path, source: dict, prepared: Path, id_step: int = 1) -> Path:
    """`id_step` 2 gives class ids 0, 2, 4, ...: `names` as a map with gaps."""
    categories = source["train"]["categories"]
    index = {c["id"]: i * id_step for i, c in enumerate(categories)}
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for image in source[split]["images"]:
            stem = Path(image["file_name"]).stem
            shutil.copy(prepared / "images" / image["file_name"], root / "images" / split / f"{stem}.jpg")
            lines = []
            for a in (a for a in source[split]["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = a["bbox"]
                W, H = image["width"], image["height"]
                lines.append(f"{index[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}")
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    config = {"path": ".", "train": "images/train", "val": "images/val", "test": "images/test", "names": {index[c["id"]]: c["name"] for c in categories}}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def write_folders(root: Path, tiny_crops: Path) -> Path:
    import csv

    import numpy as np
    from PIL import Image

    with open(tiny_crops / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    for split in dict.fromkeys(row["split"] for row in rows):
        stored = np.load(tiny_crops / f"{split}.npy")  # the crop stage's decoded crops, in manifest order
        for crop, row in zip(stored, (r for r in rows if r["split"] == split)):
            target = root / "shelf" / row["class_name"] / f"{Path(row['crop']).name}.png"  # nested class path
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop.transpose(1, 2, 0)).save(target)
    return root


# ---- round trips ------------------------------------------------------------------------------


def test_coco_per_split_round_trip(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_coco(tmp_path / "src", source_coco, prepared_root)
    card, report = prepare(_params(tiny_params, "coco", src), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    for split in SPLITS:
        assert _boxes(imported[split]) == _boxes(source_coco[split])
    assert report["skipped"] == [] and card["task"] == "detection"
    assert card["classes"] == [c["name"] for c in source_coco["train"]["categories"]]


def test_coco_single_file_is_split_stratified(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_coco(tmp_path / "src", source_coco, prepared_root, single_file=True)
    params = _params(tiny_params, "coco", src, coco={"images": "images", "annotations": "annotations/all.json"})
    card, _ = prepare(params, tmp_path / "out")
    imported = _imported(tmp_path / "out")
    assert sum((_boxes(imported[s]) for s in SPLITS), Counter()) == sum((_boxes(source_coco[s]) for s in SPLITS), Counter())
    assert all(card["splits"][s]["images"] > 0 for s in SPLITS)
    again, _ = prepare(params, tmp_path / "again")
    assert again["hash"] == card["hash"]  # the split is seeded


@pytest.mark.parametrize("source,writer", [("voc", write_voc), ("yolo", write_yolo)])
def test_voc_and_yolo_round_trip(tiny_params, source_coco, prepared_root, tmp_path, source, writer):
    src = writer(tmp_path / "src", source_coco, prepared_root)
    prepare(_params(tiny_params, source, src), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    for split in SPLITS:
        assert _boxes(imported[split]) == _boxes(source_coco[split])
    if source == "voc":  # class-style subfolders and ImageSets splits
        assert imported["train"]["images"][0]["original_file"].startswith("Annotations/train/")


VOC_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>{stem}.jpg</filename>
	<size><width>200</width><height>120</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>cola</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>200</xmax><ymax>120</ymax></bndbox>
	</object>
	<object>
		<name>fanta</name><pose>Frontal</pose><truncated>1</truncated>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>50</ymax></bndbox>
	</object>
	<object>
		<name>cola</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>50</xmin><ymin>60</ymin><xmax>80</xmax><ymax>100</ymax></bndbox>
	</object>
</annotation>
"""


def write_hand_made_voc(root: Path) -> Path:
    """Three 200x120 images, one per split, each with the hand-written VOC2007-style file above."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in SPLITS:
        Image.new("RGB", (200, 120), (90, 120, 150)).save(root / "JPEGImages" / f"{split}_01.jpg")
        (root / "Annotations" / f"{split}_01.xml").write_text(VOC_XML.format(stem=f"{split}_01"))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{split}_01\n")
    return root


@pytest.mark.parametrize("difficult", ["drop", "keep"])
def test_voc_hand_made_file_imports_exactly(tiny_params, tmp_path, difficult):
    src = write_hand_made_voc(tmp_path / "src")
    card, _ = prepare(_params(tiny_params, "voc", src, voc={"classes": [], "difficult": difficult}), tmp_path / "out")
    expected = [("cola", [0, 0, 200, 120]), ("fanta", [0, 0, 100, 50])]  # (1, 1, 200, 120) is the whole image
    if difficult == "keep":
        expected.append(("cola", [49, 59, 31, 41]))
    for split, coco in _imported(tmp_path / "out").items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        assert [(names[a["category_id"]], a["bbox"]) for a in coco["annotations"]] == expected
        assert card["splits"][split]["left_out"] == {"crowd": 0, "difficult": 1 if difficult == "drop" else 0}
    assert "left out: crowd / difficult" in (tmp_path / "out" / "card.md").read_text()


def test_yolo_names_map_with_gaps_maps_ids_by_key(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_yolo(tmp_path / "src", source_coco, prepared_root, id_step=2)
    assert list(yaml.safe_load((src / "data.yaml").read_text())["names"]) == [0, 2, 4, 6, 8, 10]
    prepare(_params(tiny_params, "yolo", src), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    for split in SPLITS:
        assert _boxes(imported[split]) == _boxes(source_coco[split])
    label = sorted((src / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(SkulabError, match=rf"{label.name}: line \d+: class id 3 not in data.yaml names \(0, 2, 4, 6, 8, 10\)"):
        prepare(_params(tiny_params, "yolo", src), tmp_path / "bad")


def test_yolo_train_and_val_only_carves_test_from_train(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_yolo(tmp_path / "src", source_coco, prepared_root)
    config = yaml.safe_load((src / "data.yaml").read_text())
    del config["test"]
    (src / "data.yaml").write_text(yaml.safe_dump(config))
    card, report = prepare(_params(tiny_params, "yolo", src), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    assert _boxes(imported["val"]) == _boxes(source_coco["val"])  # val stays the source's val
    assert _boxes(imported["train"]) + _boxes(imported["test"]) == _boxes(source_coco["train"])
    assert 0 < card["splits"]["test"]["images"] < card["splits"]["train"]["images"]
    assert report["notes"] == [
        f"the source has no 'test' split: {card['splits']['test']['images']} of {len(source_coco['train']['images'])} train images "
        "carved into it (seeded, stratified, train:test = 0.7:0.15 by prepare.external.split_ratios)"
    ]
    assert prepare(_params(tiny_params, "yolo", src), tmp_path / "again")[0]["hash"] == card["hash"]  # seeded


def test_coco_crowd_regions_are_counted_not_imported(tiny_params, source_coco, prepared_root, tmp_path):
    def crowd(src, data):
        data["train"]["annotations"][0].update(iscrowd=1, category_id=99)  # a region's class is not checked
        for ann in data["val"]["annotations"][:2]:
            ann["iscrowd"] = 1

    src = _coco_src(tmp_path, source_coco, prepared_root, crowd)
    card, report = prepare(_params(tiny_params, "coco", src), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    regions = {"train": source_coco["train"]["annotations"][:1], "val": source_coco["val"]["annotations"][:2], "test": []}
    for split in SPLITS:
        assert _boxes(imported[split]) == _boxes(source_coco[split]) - _boxes({**source_coco[split], "annotations": regions[split]})
        assert card["splits"][split]["left_out"] == {"crowd": len(regions[split]), "difficult": 0}
    assert report["skipped"] == []
    assert f"| val | {len(source_coco['val']['images'])} | " in (tmp_path / "out" / "card.md").read_text()


def _class_absent_from_train(src, data):
    victim = data["train"]["categories"][0]["id"]
    data["train"]["annotations"] = [a for a in data["train"]["annotations"] if a["category_id"] != victim]


def test_class_absent_from_train_is_dropped_from_every_split(tiny_params, source_coco, prepared_root, tmp_path):
    victim = source_coco["train"]["categories"][0]["name"]
    src = _coco_src(tmp_path, source_coco, prepared_root, _class_absent_from_train)
    with pytest.raises(SkulabError, match=rf"class '{victim}': class '{victim}' has no annotations in split 'train'"):
        prepare(_params(tiny_params, "coco", src), tmp_path / "strict")
    card, report = prepare(_params(tiny_params, "coco", src, on_bad_item="skip"), tmp_path / "out")
    imported = _imported(tmp_path / "out")
    for split in SPLITS:
        assert victim not in {c["name"] for c in imported[split]["categories"]}
        assert _boxes(imported[split]) == Counter({box: n for box, n in _boxes(source_coco[split]).items() if box[0] != victim})
    assert victim not in card["classes"]
    removed = {split: sum(n for box, n in _boxes(source_coco[split]).items() if box[0] == victim) for split in ("val", "test")}
    assert report["dropped_classes"] == {victim: removed}
    assert json.loads((tmp_path / "out" / "report.json").read_text())["dropped_classes"] == {victim: removed}


def _run_prepare_stage(tmp_path, src, on_bad_item: str) -> subprocess.CompletedProcess:
    """stages/prepare.py as a user runs it, on a COCO source, in a fresh folder with its own params.yaml."""
    repo = tmp_path / "repo"
    repo.mkdir()
    external = {"prepare": {"source": "coco", "external": {"path": str(src), "on_bad_item": on_bad_item}}}
    write_params(repo / "params.yaml", deep_merge(deep_merge(repo_params(), TINY), external))
    (repo / "dvc.yaml").write_text("stages: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=repo, env=env, capture_output=True, text=True)


def test_prepare_stage_prints_dropped_classes(tiny_params, source_coco, prepared_root, tmp_path):
    victim = source_coco["train"]["categories"][0]["name"]
    src = _coco_src(tmp_path, source_coco, prepared_root, _class_absent_from_train)
    result = _run_prepare_stage(tmp_path, src, "skip")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"prepare: 1 class(es) absent from train dropped from every split: {victim} (see data/prepared/report.json)" in result.stdout


# ---- classes missing from val or test: a warning, whatever on_bad_item says -------------------


def _victim(source_coco: dict, *splits: str) -> str:
    """A class whose removal from `splits` leaves every image of those splits with a box."""
    def leaves(category: dict, split: str) -> bool:
        kept = {a["image_id"] for a in source_coco[split]["annotations"] if a["category_id"] != category["id"]}
        return kept == {im["id"] for im in source_coco[split]["images"]}

    for category in source_coco["train"]["categories"]:
        if all(leaves(category, split) for split in splits):
            return category["name"]
    raise AssertionError(f"no class can leave {splits} without emptying an image")


def _without(coco: dict, victim: str) -> dict:
    ids = {c["id"] for c in coco["categories"] if c["name"] == victim}
    return {**coco, "annotations": [a for a in coco["annotations"] if a["category_id"] not in ids]}


def _assert_absent_reported(out: Path, report: dict, card: dict, absent: dict[str, list[str]]) -> None:
    assert report["absent_from_split"] == absent and report["skipped"] == []  # not a bad item
    assert json.loads((out / "report.json").read_text())["absent_from_split"] == absent
    assert json.loads((out / "card.json").read_text())["absent_from_split"] == absent == card["absent_from_split"]
    for split, names in absent.items():
        for name in names:
            assert card["splits"][split]["per_class"][name] == 0 and name in card["classes"]
    warning = next(line for line in (out / "card.md").read_text().splitlines() if line.startswith("**Warning**"))
    assert all(f"from {split} ({', '.join(names)})" in warning for split, names in absent.items() if names)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_coco_official_split_missing_a_class_in_val_imports_with_a_warning(tiny_params, source_coco, prepared_root, tmp_path, policy):
    victim = _victim(source_coco, "val")
    src = write_coco(tmp_path / "src", {**source_coco, "val": _without(source_coco["val"], victim)}, prepared_root)
    card, report = prepare(_params(tiny_params, "coco", src, on_bad_item=policy), tmp_path / "out")
    _assert_absent_reported(tmp_path / "out", report, card, {"val": [victim], "test": []})
    assert report["counts"] == {} and report["dropped_classes"] == {}
    assert _boxes(_imported(tmp_path / "out")["val"]) == _boxes(_without(source_coco["val"], victim))


def test_yolo_official_split_missing_a_class_in_val_and_test_imports(tiny_params, source_coco, prepared_root, tmp_path):
    victim = _victim(source_coco, "val", "test")
    source = {**source_coco, "val": _without(source_coco["val"], victim), "test": _without(source_coco["test"], victim)}
    src = write_yolo(tmp_path / "src", source, prepared_root)
    card, report = prepare(_params(tiny_params, "yolo", src), tmp_path / "out")
    _assert_absent_reported(tmp_path / "out", report, card, {"val": [victim], "test": [victim]})


def test_folders_split_lists_missing_a_class_in_test_import(tiny_params, tiny_crops, tmp_path):
    src = write_folders(tmp_path / "src", tiny_crops)
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    victim = files[0].rsplit("/", 1)[0]
    lists = {split: files[i::3] for i, split in enumerate(SPLITS)}
    lists["train"] += [f for f in lists["test"] if f.startswith(victim + "/")]
    lists["test"] = [f for f in lists["test"] if not f.startswith(victim + "/")]
    (src / "splits").mkdir()
    for split in SPLITS:
        (src / "splits" / f"{split}.txt").write_text("\n".join(lists[split]) + "\n")
    card, report = prepare(_params(tiny_params, "folders", src), tmp_path / "out")
    _assert_absent_reported(tmp_path / "out", report, card, {"val": [], "test": [victim]})


def test_a_complete_dataset_card_has_no_absent_field(tiny_params, source_coco, prepared_root, tmp_path):
    card, report = prepare(_params(tiny_params, "coco", write_coco(tmp_path / "src", source_coco, prepared_root)), tmp_path / "out")
    assert report["absent_from_split"] == {"val": [], "test": []}
    assert "absent_from_split" not in card and "**Warning**" not in (tmp_path / "out" / "card.md").read_text()


def test_prepare_stage_warns_of_a_class_absent_from_val_and_goes_on(tiny_params, source_coco, prepared_root, tmp_path):
    victim = _victim(source_coco, "val")
    src = write_coco(tmp_path / "src", {**source_coco, "val": _without(source_coco["val"], victim)}, prepared_root)
    result = _run_prepare_stage(tmp_path, src, "error")
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if "warning" in line]
    assert line.startswith(f"prepare: warning: class(es) absent from a split, kept: 1 from val ({victim}); ")
    assert line.endswith("(see data/prepared/report.json and card.md)")
    assert json.loads((tmp_path / "repo" / "data/prepared/report.json").read_text())["absent_from_split"] == {"val": [victim], "test": []}


def _item(name: str, *classes: str) -> Item:
    return Item(Path(f"{name}.jpg"), name, boxes=[Box(c, 0, 0, 1, 1, name) for c in classes])


def test_seeded_split_gives_a_rare_class_to_train_first():
    items = [_item("rare", "rare", "common"), *(_item(f"c{i}", "common") for i in range(9))]
    for seed in range(5):
        for item in items:
            item.split = None
        assign_splits(items, {"train": 0.7, "val": 0.15, "test": 0.15}, seed)
        assert items[0].split == "train"


def test_folders_become_whole_image_crops(tiny_params, tiny_crops, tmp_path):
    src = write_folders(tmp_path / "src", tiny_crops)
    card, _ = prepare(_params(tiny_params, "folders", src), tmp_path / "out")
    assert card["task"] == "classification"
    assert all(name.startswith("shelf/") for name in card["classes"])
    imported = _imported(tmp_path / "out")
    for split in SPLITS:
        for image, ann in zip(imported[split]["images"], imported[split]["annotations"]):
            assert ann["bbox"] == [0, 0, image["width"], image["height"]]


def test_folders_split_lists(tiny_params, tiny_crops, tmp_path):
    src = write_folders(tmp_path / "src", tiny_crops)
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    (src / "splits").mkdir()
    for i, split in enumerate(SPLITS):
        (src / "splits" / f"{split}.txt").write_text("\n".join(files[i::3]) + "\n")
    params = _params(tiny_params, "folders", src, on_bad_item="skip")
    prepare(params, tmp_path / "out")
    originals = {im["original_file"] for im in _imported(tmp_path / "out")["val"]["images"]}
    assert originals <= set(files[1::3])
    (src / "splits" / "test.txt").write_text("")
    with pytest.raises(SkulabError, match=r"splits: .* is in no split list"):
        prepare(params, tmp_path / "out2")


# ---- bad items: an error naming the file, or skipped and counted ------------------------------


def _coco_src(tmp_path, source_coco, prepared_root, mutate) -> Path:
    data = json.loads(json.dumps(source_coco))
    src = write_coco(tmp_path / "src", data, prepared_root)
    mutate(src, data)
    for split in SPLITS:
        (src / "annotations" / f"{split}.json").write_text(json.dumps(data[split]))
    return src


def _corrupt_first_train_image(src, data):
    (src / "images" / data["train"]["images"][0]["file_name"]).write_bytes(b"not a jpeg at all")


def _truncate_first_train_image(src, data):
    path = src / "images" / data["train"]["images"][0]["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    Image.open(path).close()  # the header still reads: only the decode finds the file cut short


def _zero_size_box(src, data):
    data["train"]["annotations"][0]["bbox"][2] = 0


def _box_far_outside(src, data):
    data["train"]["annotations"][0]["bbox"] = [5000, 5000, 10, 10]


def _unknown_category(src, data):
    data["train"]["annotations"][0]["category_id"] = 99


def _image_without_annotations(src, data):
    first = data["train"]["images"][0]["id"]
    data["train"]["annotations"] = [a for a in data["train"]["annotations"] if a["image_id"] != first]


def _duplicate_file_name(src, data):
    data["train"]["images"].append({**data["train"]["images"][0], "id": 999})


def _empty_class(src, data):
    for split in SPLITS:
        data[split]["categories"].append({"id": 77, "name": "ghost_sku", "supercategory": "product"})


BAD_ITEMS = [
    (_corrupt_first_train_image, "unreadable_image", r"annotations/train.json: image id 1 \(train/000000.jpg\): unreadable image"),
    (_zero_size_box, "bad_box", r"annotations/train.json: annotation id 1: box has zero or negative size"),
    (_box_far_outside, "box_outside_image", r"annotations/train.json: annotation id 1: box \[5000, 5000, 10, 10\] lies entirely outside"),
    (_unknown_category, "unknown_class", r"annotations/train.json: annotation id 1: unknown category_id 99"),
    (_image_without_annotations, "no_annotations", r"annotations/train.json: image id 1 \(train/000000.jpg\): image 000000.jpg has no \(valid\) annotations"),
    (_duplicate_file_name, "duplicate_file", r"annotations/train.json: image id 999 \(train/000000.jpg\): same image file as"),
    (_empty_class, "empty_class", r"class 'ghost_sku': class 'ghost_sku' has no annotations"),
]


@pytest.mark.parametrize("mutate,kind,message", BAD_ITEMS, ids=[b[1] for b in BAD_ITEMS])
def test_bad_item_is_an_error_or_skipped_and_counted(tiny_params, source_coco, prepared_root, tmp_path, mutate, kind, message):
    src = _coco_src(tmp_path, source_coco, prepared_root, mutate)
    with pytest.raises(SkulabError, match=message) as exc:
        prepare(_params(tiny_params, "coco", src), tmp_path / "strict")
    assert "on_bad_item: skip" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "strict").exists()  # nothing written before validation passed
    card, report = prepare(_params(tiny_params, "coco", src, on_bad_item="skip"), tmp_path / "lenient")
    assert report["counts"] == {kind: 1}
    assert report["skipped"][0]["kind"] == kind
    assert json.loads((tmp_path / "lenient" / "report.json").read_text())["counts"] == {kind: 1}


def test_box_partly_outside_is_clipped_or_rejected(tiny_params, source_coco, prepared_root, tmp_path):
    def overhang(src, data):
        data["train"]["annotations"][0]["bbox"] = [-10, -5, 40, 30]

    src = _coco_src(tmp_path, source_coco, prepared_root, overhang)
    prepare(_params(tiny_params, "coco", src), tmp_path / "clipped")
    first = _imported(tmp_path / "clipped")["train"]["annotations"][0]
    assert first["bbox"] == [0, 0, 30, 25]
    with pytest.raises(SkulabError, match=r"annotation id 1: box \[-10, -5, 40, 30\] outside the 192x160 image"):
        prepare(_params(tiny_params, "coco", src, box_outside_image="reject"), tmp_path / "rejected")


def test_voc_bad_object_and_unknown_class_name_the_object(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_voc(tmp_path / "src", source_coco, prepared_root)
    xml = src / "Annotations" / "train" / "train_0001.xml"
    tree = ET.parse(xml)
    tree.getroot().findall("object")[1].find("name").text = "mystery"
    tree.write(xml)
    classes = [c["name"] for c in source_coco["train"]["categories"]]
    with pytest.raises(SkulabError, match=r"Annotations/train/train_0001.xml: object 2: unknown class 'mystery'"):
        prepare(_params(tiny_params, "voc", src, voc={"classes": classes}), tmp_path / "out")


def test_yolo_bad_lines_name_the_line(tiny_params, source_coco, prepared_root, tmp_path):
    src = write_yolo(tmp_path / "src", source_coco, prepared_root)
    label = sorted((src / "labels" / "train").glob("*.txt"))[0]
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], "42 0.5 0.5 0.1 0.1", "0 0.5 oops", *lines[1:]]) + "\n")
    with pytest.raises(SkulabError, match=rf"labels/train/{label.name}: line 2: class id 42 not in data.yaml names \(0..5\) \(and 1 more\)"):
        prepare(_params(tiny_params, "yolo", src), tmp_path / "out")
    _, report = prepare(_params(tiny_params, "yolo", src, on_bad_item="skip"), tmp_path / "out")
    assert report["counts"] == {"unknown_class": 1, "bad_box": 1}
    assert report["skipped"][1]["where"] == f"labels/train/{label.name}: line 3"


def test_missing_source_folder(tiny_params, tmp_path):
    with pytest.raises(SkulabError, match="prepare.external.path: .* is not a folder"):
        prepare(_params(tiny_params, "voc", tmp_path / "nope"), tmp_path / "out")


def test_folder_images_pass_through_the_crop_stage_whole(tiny_params, tiny_crops, tmp_path):
    from PIL import Image

    from skulab.crop import crop_dataset

    src = write_folders(tmp_path / "src", tiny_crops)
    card, _ = prepare(_params(tiny_params, "folders", src), tmp_path / "prepared")
    stats = crop_dataset(tmp_path / "prepared", tmp_path / "crops", tiny_params.crop, card["hash"])
    assert sum(stats[s]["crops"] for s in SPLITS) == sum(card["splits"][s]["images"] for s in SPLITS)
    first = _imported(tmp_path / "prepared")["train"]["images"][0]
    image = Image.open(tmp_path / "prepared" / "images" / first["file_name"]).convert("RGB")
    size = tiny_params.crop.stored_size
    assert image.size == (size, size)  # written from stored crops: no resize, so the whole image must come back bit for bit
    stored = np.load(tmp_path / "crops" / "train.npy")
    assert np.array_equal(stored[0], np.asarray(image).transpose(2, 0, 1))


# ---- reading images: each opened and decoded once, large photos at a fraction of their size ----


@pytest.fixture
def image_reads(monkeypatch) -> tuple[Counter, dict[Path, list[tuple[int, int]]]]:
    """Every Image.open of a file, and every decode (a load that still has pixels to read) with the
    size it decoded at, by resolved path, while the test runs."""
    opens, decodes = Counter(), defaultdict(list)
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def counting_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):
            opens[Path(fp).resolve()] += 1
        return real_open(fp, *args, **kwargs)

    def counting_load(self):
        pending = bool(self.tile)
        pixels = real_load(self)
        if pending and getattr(self, "filename", ""):
            decodes[Path(self.filename).resolve()].append(self.size)
        return pixels

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return opens, decodes


@pytest.mark.parametrize("source", ["coco", "voc", "yolo", "folders"])
def test_each_source_image_is_opened_and_decoded_once(tiny_params, source_coco, prepared_root, tiny_crops, tmp_path, image_reads, source):
    src = tmp_path / "src"
    if source == "folders":
        write_folders(src, tiny_crops)
    else:
        {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}[source](src, source_coco, prepared_root)
    opens, decodes = image_reads
    prepare(_params(tiny_params, source, src), tmp_path / "out")
    files = sorted(p.resolve() for p in src.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(files) == sum(len(_imported(tmp_path / "out")[split]["images"]) for split in SPLITS) > 0
    for file in files:
        assert len(decodes[file]) == 1, f"{file.name} decoded {len(decodes[file])} times"
        # a PNG is opened twice: verify() checks its chunk checksums, and Pillow needs a reopen to decode
        assert opens[file] == (2 if file.suffix == ".png" else 1), f"{file.name} opened {opens[file]} times"


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A noisy picture (its JPEG is as hard to decode as a photo's): left half reddish, right half bluish."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] += 180
    pixels[:, width // 2 :, 2] += 180
    return Image.fromarray(pixels)


def _write_photo_coco(root: Path, photos: list[tuple[Image.Image, int]], box: list[float]) -> Path:
    """One photo per split as a COCO source, each saved as JPEG with EXIF `orientation` and one `box`."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, (split, (photo, orientation)) in enumerate(zip(SPLITS, photos), 1):
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo.save(root / "images" / f"{split}.jpg", quality=90, exif=exif.tobytes())
        coco = {"images": [{"id": i, "file_name": f"{split}.jpg"}], "categories": [{"id": 1, "name": "cola"}],
                "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}]}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


def test_large_jpeg_is_decoded_once_at_an_eighth_and_imported_byte_for_byte(tiny_params, tmp_path, image_reads):
    src = _write_photo_coco(tmp_path / "src", [(_photo(1600, 1200, seed), 1) for seed in range(3)], [100, 100, 400, 300])
    opens, decodes = image_reads
    prepare(_params(tiny_params, "coco", src), tmp_path / "out")
    for split in SPLITS:
        source = (src / "images" / f"{split}.jpg").resolve()
        assert decodes[source] == [(200, 150)] and opens[source] == 1  # 1/8 scale: 1/64 of the pixels in memory
        (info,) = _imported(tmp_path / "out")[split]["images"]
        assert (info["width"], info["height"]) == (1600, 1200)
        assert (tmp_path / "out" / "images" / info["file_name"]).read_bytes() == source.read_bytes()
    decoded = [size for sizes in decodes.values() for size in sizes]
    assert decoded and max(w * h for w, h in decoded) <= 800 * 600  # the contact sheet decodes at 1/2 at most


def test_exif_rotated_photo_is_imported_upright(tiny_params, tmp_path, image_reads):
    """Orientation 6 (a phone held upright): the stored 60 x 40 pixels are shown turned, 40 wide and
    60 tall, as OpenCV (mmdet) and the serving code read them, and the box is drawn on that view.
    The import turns the pixels once, so that Pillow (the crop stage) reads the same image."""
    box = [5, 35, 30, 20]  # reaches y = 55: inside the 40 x 60 view, outside the stored 60 x 40
    src = _write_photo_coco(tmp_path / "src", [(_photo(60, 40, seed), 6) for seed in range(3)], box)
    opens, decodes = image_reads
    prepare(_params(tiny_params, "coco", src, box_outside_image="reject"), tmp_path / "out")
    for split in SPLITS:
        assert len(decodes[(src / "images" / f"{split}.jpg").resolve()]) == 1
        coco = _imported(tmp_path / "out")[split]
        (info,) = coco["images"]
        assert (info["width"], info["height"]) == (40, 60) and coco["annotations"][0]["bbox"] == box
        with Image.open(tmp_path / "out" / "images" / info["file_name"]) as image:
            assert image.size == (40, 60) and image.getexif().get(0x0112) is None
            top, bottom = np.asarray(image.convert("RGB"))[[5, 55], 20].astype(int)
        assert top[0] > top[2] + 100 and bottom[2] > bottom[0] + 100  # the stored left (red) half is now on top


def test_truncated_jpeg_is_unreadable(tiny_params, source_coco, prepared_root, tmp_path):
    """The header reads, the pixels run out: only a decode finds it (the import decodes a JPEG at 1/8)."""
    src = _coco_src(tmp_path, source_coco, prepared_root, _truncate_first_train_image)
    with pytest.raises(SkulabError, match=r"annotations/train.json: image id 1 \(train/000000.jpg\): unreadable image 000000.jpg \(OSError\)"):
        prepare(_params(tiny_params, "coco", src), tmp_path / "strict")
    _, report = prepare(_params(tiny_params, "coco", src, on_bad_item="skip"), tmp_path / "lenient")
    assert report["counts"] == {"unreadable_image": 1}


def test_png_with_a_bad_checksum_is_unreadable(tiny_params, tiny_crops, tmp_path):
    src = write_folders(tmp_path / "src", tiny_crops)
    victim = sorted(src.rglob("*.png"))[0]
    data = bytearray(victim.read_bytes())
    end = data.index(b"IEND") - 4  # IEND's length field; the 4 bytes before it are the last chunk's CRC
    data[end - 1] ^= 0xFF  # pixels intact, checksum wrong: only verify() notices, and libpng (OpenCV) refuses it
    victim.write_bytes(bytes(data))
    _, report = prepare(_params(tiny_params, "folders", src, on_bad_item="skip"), tmp_path / "out")
    assert report["counts"] == {"unreadable_image": 1}
    assert report["skipped"][0]["where"] == victim.relative_to(src).as_posix()
    assert report["skipped"][0]["detail"] == f"unreadable image {victim.name} (SyntaxError)"

"""Readers for user datasets (COCO, Pascal VOC, YOLO, class folders) into one neutral form.

A reader only parses: it returns every image it found with its boxes (class names, pixel boxes)
and the problems it met while parsing (unknown class, malformed line), each naming the file and
the line or object. Validation and splitting happen afterwards, the same for every format.
"""

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from skulab.errors import SkulabError
from skulab.io import read_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# annotations that are not product boxes, left out of the import and counted in the dataset card
LEFT_OUT = ("crowd", "difficult")  # COCO iscrowd regions; VOC difficult objects (voc.difficult: drop)


@dataclass
class Box:
    class_name: str
    x: float
    y: float
    w: float
    h: float
    where: str  # "file: object 2" / "file: line 3", for error messages


@dataclass
class Item:
    path: Path  # the image file
    where: str  # the file that described it, for error messages
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None
    whole_image: bool = False  # classification sources: the image is the crop
    relative: bool = False  # boxes in fractions of the image's size (YOLO), scaled once it is known
    left_out: Counter = field(default_factory=Counter)  # LEFT_OUT kind -> annotations not imported


@dataclass
class Problem:
    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass
class SourceData:
    items: list[Item]
    classes: list[str]  # declared class names, in id order
    has_boxes: bool
    problems: list[Problem] = field(default_factory=list)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise SkulabError(f"{path}: {what} not found")
    return path


# ---- COCO -------------------------------------------------------------------------------------


def _read_coco_file(ann_path: Path, images_dir: Path, root: Path, split: str | None, data: SourceData) -> None:
    where = _rel(ann_path, root)
    coco = read_json(ann_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise SkulabError(f"{ann_path}: not a COCO detection file (no '{key}' list)")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for name in names.values():
        if name not in data.classes:
            data.classes.append(name)
    items = {}
    for image in coco["images"]:
        item = Item(images_dir / image["file_name"], f"{where}: image id {image['id']} ({image['file_name']})", split=split)
        items[image["id"]] = item
        data.items.append(item)
    for ann in coco["annotations"]:
        ref = f"{where}: annotation id {ann.get('id')}"
        item = items.get(ann.get("image_id"))
        if item is None:
            data.problems.append(Problem("unknown_image", ref, f"refers to image id {ann.get('image_id')}, which is not in 'images'"))
            continue
        if ann.get("iscrowd"):  # a region of many objects: neither a detector target nor a crop
            item.left_out["crowd"] += 1
            continue
        if ann["category_id"] not in names:
            data.problems.append(Problem("unknown_class", ref, f"unknown category_id {ann['category_id']}"))
            continue
        x, y, w, h = ann["bbox"]
        item.boxes.append(Box(names[ann["category_id"]], x, y, w, h, ref))


def read_coco(root: Path, annotations: dict[str, str] | str, images: str) -> SourceData:
    """`annotations` is one COCO JSON per split ({split: file}) or a single file to be split."""
    data = SourceData([], [], has_boxes=True)
    images_dir = _require(root / images, "COCO images folder")
    if isinstance(annotations, str):
        _read_coco_file(_require(root / annotations, "COCO annotation file"), images_dir, root, None, data)
    else:
        for split, file in annotations.items():
            _read_coco_file(_require(root / file, "COCO annotation file"), images_dir, root, split, data)
    return data


# ---- Pascal VOC -------------------------------------------------------------------------------


def _voc_image(xml_path: Path, filename: str, root: Path, by_name: dict[str, list[Path]]) -> Path | None:
    sub = xml_path.parent.relative_to(root / "Annotations")
    for candidate in (root / "JPEGImages" / sub / filename, root / "JPEGImages" / filename, xml_path.parent / filename):
        if candidate.is_file():
            return candidate
    matches = by_name.get(Path(filename).name, [])
    return matches[0] if len(matches) == 1 else None


def _split_lists(folder: Path) -> dict[str, str]:
    """folder/{train,val,test}.txt, those present: each non-empty line (stripped) -> its split."""
    splits = {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.txt"
        if path.is_file():
            splits.update({line.strip(): split for line in path.read_text().splitlines() if line.strip()})
    return splits


def _voc_box(box: ET.Element) -> tuple[float, float, float, float]:
    """VOC pixels are 1-based and both corners inclusive: (1, 1, W, H) is the whole W x H image."""
    x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    return x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1


def read_voc(root: Path, classes: list[str] | None, difficult: str) -> SourceData:
    """Annotations/**/*.xml (class subfolders allowed) and their images under JPEGImages/.

    Objects marked <difficult>1 are left out under `difficult: drop`, as the VOC protocol keeps them
    out of training and scoring; under `keep` they are ordinary boxes.
    """
    xml_files = sorted(_require(root / "Annotations", "VOC Annotations folder").rglob("*.xml"))
    if not xml_files:
        raise SkulabError(f"{root / 'Annotations'}: no .xml files")
    by_name: dict[str, list[Path]] = {}
    for image in _images_under(root):
        by_name.setdefault(image.name, []).append(image)
    # ImageSets lines are "<stem>" or, in per-class lists, "<stem> <flag>"
    splits = {line.split()[0]: split for line, split in _split_lists(root / "ImageSets" / "Main").items()}
    data = SourceData([], list(classes or []), has_boxes=True)
    for xml_path in xml_files:
        where = _rel(xml_path, root)
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            data.problems.append(Problem("unreadable_annotation", where, f"invalid XML ({exc})"))
            continue
        filename = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        image = _voc_image(xml_path, filename, root, by_name)
        if image is None:
            data.problems.append(Problem("missing_image", where, f"image '{filename}' not found"))
            continue
        item = Item(image, where, split=splits.get(xml_path.stem) or splits.get(Path(filename).stem))
        for index, obj in enumerate(tree.findall("object"), 1):
            ref = f"{where}: object {index}"
            name = (obj.findtext("name") or "").strip()
            if difficult == "drop" and (obj.findtext("difficult") or "").strip() == "1":
                item.left_out["difficult"] += 1
                continue
            try:
                x, y, w, h = _voc_box(obj.find("bndbox"))
            except (AttributeError, TypeError, ValueError):
                data.problems.append(Problem("bad_box", ref, "missing or non-numeric bndbox"))
                continue
            if classes and name not in classes:
                data.problems.append(Problem("unknown_class", ref, f"unknown class '{name}'"))
                continue
            if name not in data.classes:
                data.classes.append(name)
            item.boxes.append(Box(name, x, y, w, h, ref))
        data.items.append(item)
    if not classes:
        data.classes.sort()
    return data


# ---- YOLO -------------------------------------------------------------------------------------


def _yolo_names(config: dict, path: Path) -> dict[int, str]:
    """Class id -> name. A mapping keeps its keys as the ids, gaps included ({0: cola, 2: fanta})."""
    names = config.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise SkulabError(f"{path}: 'names' must be a non-empty list or a mapping of class ids to names")
    bad = [key for key in names if not isinstance(key, int) and not str(key).isdigit()]
    if bad:
        raise SkulabError(f"{path}: names: key '{bad[0]}' is not a class id (an integer)")
    return {int(key): str(names[key]) for key in sorted(names, key=int)}


def _id_list(ids: list[int]) -> str:
    """'0..5' when the ids are contiguous, else each one: '0, 2'."""
    return f"{ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))


def _yolo_label_file(image: Path) -> Path:
    """YOLO convention: .../images/... -> .../labels/..., same stem, .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo(root: Path, data_yaml: str) -> SourceData:
    """data.yaml with `names` and train/val/test image folders; labels as class cx cy w h (relative)."""
    config_path = _require(root / data_yaml, "YOLO data.yaml")
    config = yaml.safe_load(config_path.read_text()) or {}
    names = _yolo_names(config, config_path)
    base = root / str(config.get("path", "."))  # an absolute `path` replaces root
    data = SourceData([], list(names.values()), has_boxes=True)
    split_dirs = {split: config[split] for split in ("train", "val", "test") if config.get(split)}
    if not split_dirs:
        raise SkulabError(f"{config_path}: needs at least a 'train' image folder")
    for split, folder in split_dirs.items():
        images = _images_under(_require(base / folder, f"YOLO '{split}' image folder"))
        for image in images:
            label = _yolo_label_file(image)
            # relative boxes: validation scales them by the image's size, read where it decodes the image
            item = Item(image, _rel(label, root), split=split if len(split_dirs) > 1 else None, relative=True)
            data.items.append(item)
            if not label.is_file():
                continue
            for number, line in enumerate(label.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                ref = f"{_rel(label, root)}: line {number}"
                fields = line.split()
                try:
                    class_id, cx, cy, w, h = int(fields[0]), *map(float, fields[1:5])
                    if len(fields) != 5:
                        raise ValueError
                except (ValueError, IndexError):
                    data.problems.append(Problem("bad_box", ref, f"expected 'class cx cy w h', got '{line.strip()}'"))
                    continue
                if class_id not in names:
                    data.problems.append(Problem("unknown_class", ref, f"class id {class_id} not in data.yaml names ({_id_list(list(names))})"))
                    continue
                item.boxes.append(Box(names[class_id], cx - w / 2, cy - h / 2, w, h, ref))
    return data


# ---- class folders ----------------------------------------------------------------------------


def read_folders(root: Path) -> SourceData:
    """<class>/[<sub>/...]/image: the class is the folder path; optional splits/{train,val,test}.txt."""
    split_of = _split_lists(root / "splits")
    data = SourceData([], [], has_boxes=False)
    for image in _images_under(root):
        rel = image.relative_to(root)
        if rel.parts[0] == "splits":
            continue
        if len(rel.parts) < 2:
            data.problems.append(Problem("unknown_class", rel.as_posix(), "image outside any class folder"))
            continue
        name = rel.parent.as_posix()
        if name not in data.classes:
            data.classes.append(name)
        item = Item(image, rel.as_posix(), split=split_of.get(rel.as_posix()), whole_image=True)
        item.boxes.append(Box(name, 0, 0, 0, 0, rel.as_posix()))  # sized to the image on validation
        data.items.append(item)
    if split_of:
        missing = [item.where for item in data.items if item.split is None]
        if missing:
            raise SkulabError(f"{root / 'splits'}: {missing[0]} is in no split list ({len(missing)} images unlisted)")
    data.classes.sort()
    return data

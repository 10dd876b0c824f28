"""Import a user dataset: read it, validate everything before writing, split, write internal COCO.

Every bad item is either a hard error naming the file and line or object, or, under
`on_bad_item: skip`, skipped and listed in report.json. Nothing is dropped silently. A class
missing from val or test is not a bad item but a warning (report.json, the card, the stage's output).
"""

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from skulab.data.coco import coco_dict
from skulab.data.sources import LEFT_OUT, Item, Problem, SourceData, read_coco, read_folders, read_voc, read_yolo
from skulab.errors import SkulabError
from skulab.io import write_json_atomic
from skulab.layout import SPLITS, annotations_file
from skulab.params import ExternalParams


def read_source(source: str, params: ExternalParams) -> SourceData:
    root = Path(params.path)
    if not root.is_dir():
        raise SkulabError(f"prepare.external.path: {root} is not a folder")
    if source == "coco":
        return read_coco(root, params.coco.annotations, params.coco.images)
    if source == "voc":
        return read_voc(root, params.voc.classes or None, params.voc.difficult)
    if source == "yolo":
        return read_yolo(root, params.yolo.data_yaml)
    return read_folders(root)


@dataclass
class Checked:
    items: list[Item]
    classes: list[str]
    sizes: dict[int, tuple[int, int]]  # id(item) -> (width, height) of the imported (upright) image
    turned: dict[int, Path] = field(default_factory=dict)  # id(item) -> its upright file, staged in the output
    problems: list[Problem] = field(default_factory=list)


JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone JPEG carrying extra pictures (depth, preview); the first is read
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (2..8 turn or mirror the stored pixels), 1 when absent, invalid or unparsable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block: the pixels are shown as stored, as OpenCV does then
        return 1
    return value if value in range(2, 9) else 1


@dataclass
class Decoded:
    width: int  # upright, as every reader shows it
    height: int
    format: str  # Pillow's: JPEG, PNG, ...
    upright: Image.Image | None  # the turned image when the EXIF orientation turns it; None: import the bytes


def decode_image(path: Path) -> Decoded:
    """Open and decode `path` once: its upright size and, when its EXIF orientation turns it, the
    upright image (else the file's bytes are imported as they are).

    The one decode is what finds a corrupt or truncated file; it raises whatever Pillow raises. A
    JPEG that needs no turning decodes at 1/8 scale: libjpeg still reads every byte of it and fails on
    the same files as a full decode, with 1/64 of the pixels in memory. A PNG's chunk checksums, which
    a decode skips and libpng (OpenCV, so mmdet) rejects, are checked by verify() first: it reads the
    file without decoding it, and Pillow requires a reopen after it.
    """
    image = Image.open(path)
    try:
        if image.format == "PNG":
            image.verify()
            image.close()
            image = Image.open(path)
        width, height = image.size
        turn = _orientation(image)  # from the header; a PNG keeping its EXIF after the pixels decodes here, once
        if turn == 1 and image.format in JPEG_FORMATS:
            image.draft(None, (max(1, width // 8), max(1, height // 8)))
        image.load()
        if turn == 1:
            return Decoded(width, height, image.format, None)
        # Pillow turns a TIFF itself while loading it (OpenCV 5 cannot read such a TIFF): then this copies it
        upright = ImageOps.exif_transpose(image)
        return Decoded(upright.width, upright.height, image.format, upright)
    finally:
        image.close()


def stage_upright(source: Path, decoded: Decoded, stage: Path, stem: str) -> Path:
    """Write the upright image of a photo that its EXIF orientation turns to `stage` as `stem` + suffix,
    encoded once (JPEG quality 95; other formats as PNG) without the orientation tag, so that every
    reader (Pillow, OpenCV) sees the same pixels. (An image that needs no turning is imported by
    copying its bytes.)"""
    stage.mkdir(parents=True, exist_ok=True)
    upright = decoded.upright
    extra = {key: upright.info[key] for key in ("exif", "icc_profile") if upright.info.get(key)}
    if decoded.format in JPEG_FORMATS:
        target = stage / f"{stem}{source.suffix.lower()}"
        image = upright if upright.mode in ("L", "RGB", "CMYK") else upright.convert("RGB")
        image.save(target, format="JPEG", quality=95, **extra)
    else:
        target = stage / f"{stem}.png"
        image = upright if upright.mode in PNG_MODES else upright.convert("RGBA" if "A" in upright.mode else "RGB")
        image.save(target, format="PNG", **extra)
    return target


def _check_box(box, width: int, height: int, policy: str) -> Problem | None:
    if box.w <= 0 or box.h <= 0:
        return Problem("bad_box", box.where, f"box has zero or negative size ({box.w:g} x {box.h:g})")
    inside = box.x >= 0 and box.y >= 0 and box.x + box.w <= width and box.y + box.h <= height
    if inside:
        return None
    if policy == "reject":
        return Problem("box_outside_image", box.where, f"box [{box.x:g}, {box.y:g}, {box.w:g}, {box.h:g}] outside the {width}x{height} image")
    x1, y1 = max(0.0, box.x), max(0.0, box.y)
    x2, y2 = min(float(width), box.x + box.w), min(float(height), box.y + box.h)
    if x2 <= x1 or y2 <= y1:
        return Problem("box_outside_image", box.where, f"box [{box.x:g}, {box.y:g}, {box.w:g}, {box.h:g}] lies entirely outside the {width}x{height} image")
    box.x, box.y, box.w, box.h = x1, y1, x2 - x1, y2 - y1
    return None


def _left_out_note(item: Item) -> str:
    """' (only 2 crowd annotations, left out)': why an image that had annotations has none left."""
    if not item.left_out:
        return ""
    return f" (only {', '.join(f'{n} {kind}' for kind, n in item.left_out.items())} annotations, left out)"


def check_items(data: SourceData, params: ExternalParams, stage: Path) -> Checked:
    """Image, box, class and duplicate checks on every item; bad parts are left out and recorded.

    Each image is opened and decoded once (`decode_image`), one at a time. A kept image that its
    EXIF orientation turns is written upright to `stage` (a folder inside the output being written)
    right away, so that nothing decodes it again; the others are copied byte for byte when written.
    """
    problems = list(data.problems)
    kept, sizes, turned, seen = [], {}, {}, {}
    for index, item in enumerate(data.items):
        decoded = None  # the previous item's decoded image is released before the next decode
        key = item.path.resolve()
        if key in seen:
            problems.append(Problem("duplicate_file", item.where, f"same image file as {seen[key]} ({item.path.name})"))
            continue
        seen[key] = item.where
        try:
            decoded = decode_image(item.path)
        except FileNotFoundError:
            problems.append(Problem("missing_image", item.where, f"image file {item.path} not found"))
            continue
        except Exception as exc:  # PIL raises many types for corrupt files
            problems.append(Problem("unreadable_image", item.where, f"unreadable image {item.path.name} ({type(exc).__name__})"))
            continue
        width, height = decoded.width, decoded.height
        if item.relative:
            for box in item.boxes:
                box.x, box.y, box.w, box.h = box.x * width, box.y * height, box.w * width, box.h * height
        if item.whole_image:
            item.boxes[0].w, item.boxes[0].h = width, height
        good = []
        for box in item.boxes:
            problem = _check_box(box, width, height, params.box_outside_image)
            if problem:
                problems.append(problem)
            else:
                good.append(box)
        item.boxes = good
        if not good:
            problems.append(Problem("no_annotations", item.where, f"image {item.path.name} has no (valid) annotations{_left_out_note(item)}"))
            continue
        sizes[id(item)] = (width, height)
        if decoded.upright is not None:
            turned[id(item)] = stage_upright(item.path, decoded, stage, f"{index:06d}")
        kept.append(item)
    used = Counter(box.class_name for item in kept for box in item.boxes)
    classes = []
    for name in data.classes:
        if used[name]:
            classes.append(name)
        else:
            problems.append(Problem("empty_class", f"class '{name}'", f"class '{name}' has no annotations"))
    return Checked(kept, classes, sizes, turned, problems)


def assign_splits(items: list[Item], ratios: dict[str, float], seed: int) -> None:
    """Seeded split of the items the source left unsplit into the splits of `ratios`, stratified.

    Rarest classes first, each split in `ratios` order (train first: a class nobody trains on is
    dropped) gets an image of every class that has one left; the rest go to the split furthest
    below its ratio. So a class with at least 3 images reaches every split.
    """
    unsplit = [items[i] for i in np.random.default_rng(seed).permutation(len(items)) if items[i].split is None]
    if not unsplit:
        return
    total = sum(ratios.values())
    target = {split: ratio / total * len(unsplit) for split, ratio in ratios.items()}
    count = Counter()
    classes_of = {id(item): {box.class_name for box in item.boxes} for item in unsplit}
    frequency = Counter(name for names in classes_of.values() for name in names)

    def place(item: Item, split: str) -> None:
        item.split = split
        count[split] += 1

    for name in sorted(frequency, key=lambda n: (frequency[n], n)):
        holders = [item for item in unsplit if name in classes_of[id(item)]]
        covered = {item.split for item in holders if item.split}
        free = [item for item in holders if item.split is None]
        for split in ratios:
            if split not in covered and free:
                place(free.pop(0), split)
    for item in unsplit:
        if item.split is None:
            place(item, max(ratios, key=lambda split: target[split] - count[split]))


def carve_missing_splits(items: list[Item], declared: set[str | None], ratios: dict[str, float], seed: int) -> list[str]:
    """A source split into train and val only (YOLO's usual data.yaml) gets its test split from train.

    Only when the source split every image itself. The missing split is a seeded, stratified share
    of train that stands to the rest of train as in split_ratios; val stays the source's val.
    Returns one note per carved split for the stage to print.
    """
    missing = [split for split in SPLITS if split not in declared]
    if None in declared or "train" not in declared or not missing:
        return []
    train = [item for item in items if item.split == "train"]
    for item in train:
        item.split = None
    assign_splits(train, {"train": ratios["train"], **{split: ratios[split] for split in missing}}, seed)
    return [
        f"the source has no '{split}' split: {sum(item.split == split for item in train)} of {len(train)} train images "
        f"carved into it (seeded, stratified, train:{split} = {ratios['train']:g}:{ratios[split]:g} by prepare.external.split_ratios)"
        for split in missing
    ]


def drop_classes_absent_from_train(checked: Checked) -> dict[str, dict[str, int]]:
    """A class no train box teaches cannot be recognized (its prototype would be empty): drop it from
    every split. Returns, per dropped class, the boxes removed from each split."""
    in_train = {box.class_name for item in checked.items if item.split == "train" for box in item.boxes}
    dropped = {name: Counter() for name in checked.classes if name not in in_train}
    if not dropped:
        return {}
    for name in dropped:
        checked.problems.append(Problem("class_absent_from_split", f"class '{name}'", f"class '{name}' has no annotations in split 'train' (nothing to learn it from; skipping drops it from every split)"))
    kept = []
    for item in checked.items:
        for box in item.boxes:
            if box.class_name in dropped:
                dropped[box.class_name][item.split] += 1
        item.boxes = [box for box in item.boxes if box.class_name not in dropped]
        if item.boxes:
            kept.append(item)
        else:
            checked.problems.append(Problem("no_annotations", item.where, f"image {item.path.name} holds only classes absent from train"))
    checked.items = kept
    checked.classes = [name for name in checked.classes if name not in dropped]
    return {name: dict(per_split) for name, per_split in dropped.items()}


EVAL_SPLITS = ("val", "test")


def classes_absent_from_eval_splits(checked: Checked) -> dict[str, list[str]]:
    """Per val and test split, the classes with no box there: a warning, not a bad item.

    Real datasets' official splits often miss classes in val or test; such a class is still learnt
    from train, only its accuracy on that split is not measured. So it is reported (report.json, the
    card, one printed line), never fatal and independent of on_bad_item. Run after the classes absent
    from train were dropped, so every class left is in train.
    """
    present = {split: set() for split in EVAL_SPLITS}
    for item in checked.items:
        if item.split in present:
            present[item.split].update(box.class_name for box in item.boxes)
    return {split: [name for name in checked.classes if name not in present[split]] for split in EVAL_SPLITS}


def enforce_policy(problems: list[Problem], policy: str) -> dict:
    """Raise on the first problem under `error`; under `skip`, return the report of what was left out."""
    if problems and policy == "error":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SkulabError(f"{problems[0]}{more}; fix the data or set prepare.external.on_bad_item: skip")
    return {
        "policy": policy,
        "counts": dict(Counter(p.kind for p in problems)),
        "skipped": [{"kind": p.kind, "where": p.where, "detail": p.detail} for p in problems],
    }


def count_left_out(items: list[Item]) -> dict[str, dict[str, int]]:
    """Per split, the annotations of imported images that were not products (see LEFT_OUT)."""
    return {split: {kind: sum(item.left_out[kind] for item in items if item.split == split) for kind in LEFT_OUT} for split in SPLITS}


STAGE = ".turned"  # under the output being written: the upright images, until their split and name are known


def import_external(source: str, params: ExternalParams, seed: int, root: Path) -> dict:
    """Validate the whole source, then write the internal layout to `root`; return the report.

    `root` is the output being written (prepare moves it into place only when everything passed), so
    the upright images staged while checking are never seen in a failed or interrupted import.
    """
    data = read_source(source, params)
    declared = {item.split for item in data.items}
    stage = root / STAGE
    checked = check_items(data, params, stage)
    ratios = params.split_ratios.model_dump()
    assign_splits(checked.items, ratios, seed)
    notes = carve_missing_splits(checked.items, declared, ratios, seed)
    dropped = drop_classes_absent_from_train(checked)
    absent = classes_absent_from_eval_splits(checked)
    report = enforce_policy(checked.problems, params.on_bad_item)
    report.update(notes=notes, dropped_classes=dropped, absent_from_split=absent, left_out=count_left_out(checked.items))
    counts = Counter(item.split for item in checked.items)
    empty = [split for split in SPLITS if not counts[split]]
    if empty:
        raise SkulabError(f"{params.path}: split '{empty[0]}' has no usable images ({dict(counts)} images per split)")
    class_ids = {name: i + 1 for i, name in enumerate(checked.classes)}
    categories = [{"id": i, "name": name, "supercategory": "product"} for name, i in class_ids.items()]
    for split in SPLITS:
        images, annotations = [], []
        for item in (it for it in checked.items if it.split == split):
            width, height = checked.sizes[id(item)]
            staged = checked.turned.get(id(item))
            file_name = f"{split}/{len(images) + 1:06d}{staged.suffix if staged else item.path.suffix.lower()}"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            if staged:
                os.replace(staged, root / "images" / file_name)
            else:
                shutil.copyfile(item.path, root / "images" / file_name)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, "original_file": item.where})
            for box in item.boxes:
                bbox = [round(v, 2) for v in (box.x, box.y, box.w, box.h)]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": class_ids[box.class_name],
                     "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
                )
        write_json_atomic(annotations_file(root, split), coco_dict(images, annotations, categories))
    if stage.exists():
        shutil.rmtree(stage)  # what is left: the upright images of items dropped after the checks
    report["task"] = "detection" if data.has_boxes else "classification"
    return report

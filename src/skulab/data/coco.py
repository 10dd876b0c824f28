"""The internal dataset layout: images/<split>/..., annotations/<split>.json (COCO), card.json."""

from pathlib import Path

import numpy as np

from skulab.data.sources import LEFT_OUT
from skulab.errors import SkulabError
from skulab.io import read_json, write_json_atomic
from skulab.layout import SPLITS, annotations_file, card_file


def coco_dict(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def load_split(root: Path, split: str) -> dict:
    path = annotations_file(root, split)
    try:
        coco = read_json(path)
    except FileNotFoundError:
        raise SkulabError(f"{path}: annotations missing; run the prepare stage first") from None
    if not coco.get("images"):
        raise SkulabError(f"{path}: split '{split}' has no images")
    return coco


AGNOSTIC_CLASS = "product"  # the one class of a class-agnostic detector


def detector_annotations(prepared: Path, out: Path, class_aware: bool) -> tuple[dict[str, Path], list[str]]:
    """The COCO files the detector trains on: every SKU class, or all boxes as one 'product' class."""
    paths, names = {}, []
    for split in SPLITS:
        coco = load_split(prepared, split)
        if not coco["annotations"]:
            raise SkulabError(f"{prepared}/annotations/{split}.json: split '{split}' has no boxes to detect")
        if class_aware:
            names = [name for _, name in sorted(class_names(coco).items())]
        else:
            coco = {
                **coco,
                "categories": [{"id": 1, "name": AGNOSTIC_CLASS}],
                "annotations": [{**ann, "category_id": 1} for ann in coco["annotations"]],
            }
            names = [AGNOSTIC_CLASS]
        paths[split] = out / f"{split}.json"
        write_json_atomic(paths[split], coco)
    return paths, names


def load_card(root: Path) -> dict:
    path = card_file(root)
    try:
        return read_json(path)
    except FileNotFoundError:
        raise SkulabError(f"{path}: dataset card missing; run the prepare stage first") from None


def class_names(coco: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in coco["categories"]}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"p5": round(float(p5), 1), "p50": round(float(p50), 1), "p95": round(float(p95), 1)}


def dataset_card(root: Path, name: str, dataset_hash: str, task: str, left_out: dict | None = None, absent: dict | None = None) -> dict:
    """Counts per class and split, box size percentiles, the task and the dataset hash.

    `left_out` counts, per split, annotations that are not products (crowd regions, VOC difficult
    objects) and so are in no box count: a reader sees what the import set aside. `absent` lists,
    per split, the classes with no box there; the card carries it (`absent_from_split`) only when
    some class is missing, so a complete dataset's card stays as it was.
    """
    card = {"name": name, "hash": dataset_hash, "task": task, "splits": {}}
    for split in SPLITS:
        coco = load_split(root, split)
        names = class_names(coco)
        split_left_out = (left_out or {}).get(split, {})
        per_class = {n: 0 for n in names.values()}
        for ann in coco["annotations"]:
            per_class[names[ann["category_id"]]] += 1
        card["splits"][split] = {
            "images": len(coco["images"]),
            "boxes": len(coco["annotations"]),
            "per_class": per_class,
            "box_width": _percentiles([a["bbox"][2] for a in coco["annotations"]]),
            "box_height": _percentiles([a["bbox"][3] for a in coco["annotations"]]),
            "left_out": {kind: split_left_out.get(kind, 0) for kind in LEFT_OUT},
        }
    card["classes"] = list(names.values())
    if any((absent or {}).values()):
        card["absent_from_split"] = absent
    return card


def absent_warning(absent: dict[str, list[str]]) -> str:
    """One line naming the classes missing from each split, or '' when every class is everywhere."""
    parts = [f"{len(names)} from {split} ({', '.join(names)})" for split, names in absent.items() if names]
    if not parts:
        return ""
    return (
        f"class(es) absent from a split, kept: {'; '.join(parts)}; they are learnt from train, "
        "but their accuracy on that split is not measured (its metrics average over the other classes)"
    )


def card_markdown(card: dict) -> str:
    lines = [f"# Dataset card: {card['name']}", "", f"task: {card['task']}, hash: `{card['hash']}`", ""]
    warning = absent_warning(card.get("absent_from_split", {}))
    if warning:
        lines += [f"**Warning**: {warning}.", ""]
    kinds = " / ".join(LEFT_OUT)
    lines += [f"| split | images | boxes | box width p5/p50/p95 | box height p5/p50/p95 | left out: {kinds} |", "|---|---:|---:|---:|---:|---:|"]
    for split, v in card["splits"].items():
        w, h, left = ("/".join(str(x) for x in v[key].values()) for key in ("box_width", "box_height", "left_out"))
        lines.append(f"| {split} | {v['images']} | {v['boxes']} | {w} | {h} | {left} |")
    boxes = sum(v["boxes"] for v in card["splits"].values())
    sizes = ", ".join(f"{boxes * 3 * side**2 / 2**20:,.0f} MiB at {side} px (image_size {image})" for side, image in ((74, 64), (147, 128), (258, 224)))
    lines += ["", f"Crop store (RAM estimate): {boxes} crops x S² x 3 bytes (S = crop.stored_size): {sizes}; memory-mapped, "
              "so it needs disk, not RAM (a detector's test crops add about one test split more)."]
    lines += ["", "| class | " + " | ".join(card["splits"]) + " |", "|---|" + "---:|" * len(card["splits"])]
    for name in card["classes"]:
        lines.append(f"| {name} | " + " | ".join(str(v["per_class"][name]) for v in card["splits"].values()) + " |")
    return "\n".join(lines) + "\n"

"""The internal dataset layout: images/<split>/..., annotations/<split>.json (COCO), card.json."""

import json
from pathlib import Path

from skulab.errors import SkulabError
from skulab.layout import SPLITS, annotations_file, card_file


def coco_dict(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def load_split(root: Path, split: str) -> dict:
    path = annotations_file(root, split)
    try:
        coco = json.loads(path.read_text())
    except FileNotFoundError:
        raise SkulabError(f"{path}: annotations missing; run the prepare stage first") from None
    except json.JSONDecodeError as exc:
        raise SkulabError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not coco.get("images"):
        raise SkulabError(f"{path}: split '{split}' has no images")
    return coco


def load_card(root: Path) -> dict:
    path = card_file(root)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SkulabError(f"{path}: dataset card missing; run the prepare stage first") from None


def class_names(coco: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in coco["categories"]}


def dataset_card(root: Path, name: str, dataset_hash: str) -> dict:
    """Counts of images and boxes per class and split, with the dataset hash."""
    card = {"name": name, "hash": dataset_hash, "splits": {}}
    for split in SPLITS:
        coco = load_split(root, split)
        names = class_names(coco)
        per_class = {n: 0 for n in names.values()}
        for ann in coco["annotations"]:
            per_class[names[ann["category_id"]]] += 1
        card["splits"][split] = {
            "images": len(coco["images"]),
            "boxes": len(coco["annotations"]),
            "per_class": per_class,
        }
    card["classes"] = list(names.values())
    return card


def card_markdown(card: dict) -> str:
    lines = [f"# Dataset card: {card['name']}", "", f"hash: `{card['hash']}`", ""]
    lines += ["| split | images | boxes |", "|---|---:|---:|"]
    lines += [f"| {s} | {v['images']} | {v['boxes']} |" for s, v in card["splits"].items()]
    lines += ["", "| class | " + " | ".join(card["splits"]) + " |", "|---|" + "---:|" * len(card["splits"])]
    for name in card["classes"]:
        lines.append(f"| {name} | " + " | ".join(str(v["per_class"][name]) for v in card["splits"].values()) + " |")
    return "\n".join(lines) + "\n"

"""The prepare stage: write the dataset in the internal COCO layout, with its card and contact sheet."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from skulab.data.external import import_external
from skulab.data.coco import card_markdown, coco_dict, dataset_card, load_split
from skulab.data.synthetic import SceneConfig, encode_jpeg, make_skus, render_scene, render_sku
from skulab.io import atomic_path, hash_files, write_bytes_atomic, write_json_atomic, write_text_atomic
from skulab.layout import SPLITS, annotations_file, card_file, import_report_file
from skulab.params import PrepareParams
from skulab.plots import plot_box_sizes, plot_contact_sheet, plot_sku_gallery


def generate_synthetic(params: PrepareParams, root: Path) -> None:
    syn = params.synthetic
    skus = make_skus(syn.num_classes, syn.lookalike_group_size, params.seed)
    sprites = {sku.id: render_sku(sku) for sku in skus}
    categories = [{"id": s.id, "name": s.name, "supercategory": s.shape} for s in skus]
    scene_cfg = SceneConfig(syn.width, syn.height, syn.shelf_rows, syn.occlusion_prob, syn.max_blur, syn.lighting)
    for split_index, split in enumerate(SPLITS):
        images, annotations = [], []
        count = getattr(syn.scenes, split)
        for index in tqdm(range(count), desc=f"prepare {split}", unit="scene"):
            rng = np.random.default_rng([params.seed, split_index, index])
            scene, boxes = render_scene(skus, sprites, scene_cfg, rng)
            file_name = f"{split}/{index:06d}.jpg"
            write_bytes_atomic(root / "images" / file_name, encode_jpeg(scene))
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": syn.width, "height": syn.height})
            for category_id, x, y, w, h in boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        write_json_atomic(annotations_file(root, split), coco_dict(images, annotations, categories))
    plot_sku_gallery([(sku.name, sprites[sku.id]) for sku in skus], root / "sku_gallery.png")


CONTACT_WIDTH = 320  # the contact sheet's tiles: at most this many pixels a side


def contact_sheet_images(root: Path, split: str = "train", count: int = 6, width: int = CONTACT_WIDTH) -> Iterator[tuple[Image.Image, list[tuple]]]:
    """The first `count` images of a split, each with its boxes as (x, y, w, h, class id) in its pixels.

    A large JPEG (a 4000 x 3000 phone photo) is decoded at the smallest scale libjpeg offers (1/2 to
    1/8) that is still at least `width` wide or tall, not at full size; one image at a time (a
    generator: plots.plot_contact_sheet shrinks each before the next is read).
    """
    coco = load_split(root, split)
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for info in coco["images"][:count]:
        with Image.open(root / "images" / info["file_name"]) as opened:
            opened.draft("RGB", (width, width))
            scale = opened.width / info["width"]
            image = opened.convert("RGB")
        boxes = []
        for ann in by_image.get(info["id"], []):
            x, y, w, h = (v * scale for v in ann["bbox"]) if scale != 1 else ann["bbox"]
            boxes.append((x, y, w, h, ann["category_id"]))
        yield image, boxes


def prepare(params: PrepareParams, out: Path) -> tuple[dict, dict]:
    """Write the whole dataset to `out` atomically; return its card and the import report."""
    with atomic_path(out) as root:
        if params.source == "synthetic":
            generate_synthetic(params, root)
            report = {"policy": "n/a", "counts": {}, "skipped": [], "task": "detection"}
            name = f"synthetic(seed={params.seed})"
        else:
            report = import_external(params.source, params.external, params.seed, root)
            name = f"{params.source}:{params.external.path}"
        write_json_atomic(import_report_file(root), report)
        card = dataset_card(root, name, hash_files(root), report["task"], report.get("left_out"), report.get("absent_from_split"))
        write_json_atomic(card_file(root), card)
        write_text_atomic(root / "card.md", card_markdown(card))
        plot_contact_sheet(contact_sheet_images(root), root / "contact_sheet.png", CONTACT_WIDTH)
        plot_box_sizes({split: load_split(root, split) for split in SPLITS}, root / "box_sizes.png")
    return card, report

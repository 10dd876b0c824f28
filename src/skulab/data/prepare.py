"""The prepare stage: write the dataset in the internal COCO layout, with its card and contact sheet."""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from skulab.data.external import import_external
from skulab.data.coco import card_markdown, coco_dict, dataset_card, load_split
from skulab.data.synthetic import SceneConfig, encode_jpeg, make_skus, render_scene, render_sku
from skulab.io import atomic_path, hash_files, write_bytes_atomic, write_json_atomic, write_text_atomic
from skulab.layout import SPLITS, annotations_file, card_file
from skulab.params import PrepareParams
from skulab.plots import plot_box_sizes


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
    write_bytes_atomic(root / "sku_gallery.png", _png(_sku_gallery(skus, sprites)))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sku_gallery(skus, sprites, cell: int = 96) -> Image.Image:
    """Every SKU side by side with its name, so look-alike groups can be compared."""
    cols = 8
    rows = (len(skus) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    for i, sku in enumerate(skus):
        sprite = sprites[sku.id].copy()
        sprite.thumbnail((cell - 8, cell - 8))
        x, y = (i % cols) * cell, (i // cols) * (cell + 14)
        sheet.paste(sprite, (x + (cell - sprite.width) // 2, y + 2), sprite)
        draw.text((x + 2, y + cell), sku.name[:16], fill=(0, 0, 0))
    return sheet


def contact_sheet(root: Path, split: str = "train", count: int = 6, width: int = 320) -> Image.Image:
    """The first `count` images of a split with their boxes and class ids drawn.

    A large JPEG (a 4000 x 3000 phone photo) is decoded at the smallest scale libjpeg offers (1/2 to
    1/8) that is still at least `width` wide or tall, not at full size; one image at a time.
    """
    coco = load_split(root, split)
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tiles = []
    for info in coco["images"][:count]:
        with Image.open(root / "images" / info["file_name"]) as opened:
            opened.draft("RGB", (width, width))
            scale = opened.width / info["width"]
            image = opened.convert("RGB")
        draw = ImageDraw.Draw(image)
        for ann in by_image.get(info["id"], []):
            x, y, w, h = (v * scale for v in ann["bbox"]) if scale != 1 else ann["bbox"]
            draw.rectangle([x, y, x + w, y + h], outline=(255, 0, 255), width=2)
            draw.text((x + 2, y + 2), str(ann["category_id"]), fill=(255, 255, 0))
        image.thumbnail((width, width))
        tiles.append(image)
    cols = min(3, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * tile_w, (i // cols) * tile_h))
    return sheet


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
        write_json_atomic(root / "report.json", report)
        card = dataset_card(root, name, hash_files(root), report["task"], report.get("left_out"), report.get("absent_from_split"))
        write_json_atomic(card_file(root), card)
        write_text_atomic(root / "card.md", card_markdown(card))
        write_bytes_atomic(root / "contact_sheet.png", _png(contact_sheet(root)))
        plot_box_sizes({split: load_split(root, split) for split in SPLITS}, root / "box_sizes.png")
    return card, report

"""Deterministic synthetic shelf scenes: the default dataset, generated with no download.

SKUs come in look-alike groups that share package shape and palette and differ only in label
details (logo shape, stripe count, pseudo-text pattern), so recognition is not trivial. Scenes put
runs of facings on shelf rows with varying scale, lighting, blur and partial occlusion. Every
random draw comes from a numpy Generator seeded by (seed, split, scene), so the same seed gives
byte-identical images and annotations.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SHAPES = ("box", "can", "bottle", "carton", "jar", "pouch")
# (name, body colour, accent colour): one palette per look-alike group
PALETTES = (
    ("red", (200, 40, 40), (250, 230, 200)),
    ("blue", (40, 70, 190), (230, 240, 255)),
    ("green", (40, 150, 70), (250, 250, 210)),
    ("yellow", (235, 200, 40), (120, 40, 30)),
    ("orange", (240, 130, 30), (255, 255, 255)),
    ("purple", (120, 50, 150), (240, 220, 250)),
    ("teal", (30, 150, 150), (255, 240, 220)),
    ("brown", (120, 80, 50), (240, 220, 170)),
    ("black", (35, 35, 40), (220, 180, 60)),
    ("white", (235, 235, 230), (200, 30, 50)),
    ("pink", (230, 120, 160), (255, 255, 255)),
    ("navy", (25, 35, 90), (240, 200, 60)),
)
LOGOS = ("circle", "square", "triangle", "diamond", "star", "ring")
# relative (width, height) of each package shape
SHAPE_SIZE = {"box": (0.75, 1.0), "can": (0.5, 0.7), "bottle": (0.38, 1.0), "carton": (0.55, 0.95), "jar": (0.6, 0.65), "pouch": (0.7, 0.85)}
SPRITE_HEIGHT = 160


@dataclass(frozen=True)
class Sku:
    id: int  # COCO category id, 1-based
    name: str
    shape: str
    body: tuple
    accent: tuple
    logo: str
    stripes: int
    text_bits: int
    size: tuple  # relative (width, height)


def make_skus(num_classes: int, group_size: int, seed: int) -> list[Sku]:
    """Look-alike groups: same shape and palette, different logo, stripes and pseudo-text."""
    rng = np.random.default_rng([seed, 1_000_003])
    skus = []
    for index in range(num_classes):
        group, member = divmod(index, group_size)
        shape = SHAPES[group % len(SHAPES)]
        palette_name, body, accent = PALETTES[group % len(PALETTES)]
        suffix = ""
        if group >= len(PALETTES):  # past the distinct palettes: shift the colour, keep names unique
            body = tuple(int(c) for c in (np.array(body) * 0.6 + rng.integers(0, 100, 3)).clip(0, 255))
            suffix = str(group // len(PALETTES))
        logo = LOGOS[(member + group) % len(LOGOS)]
        skus.append(
            Sku(
                id=index + 1,
                name=f"{shape}_{palette_name}{suffix}_{chr(ord('a') + member)}",
                shape=shape,
                body=body,
                accent=accent,
                logo=logo,
                stripes=1 + (member * 2 + group) % 4,
                text_bits=int(rng.integers(1, 2**12)),
                size=SHAPE_SIZE[shape],
            )
        )
    return skus


def _outline(shape: str, w: int, h: int) -> list[tuple[float, float]]:
    if shape == "bottle":
        neck = w * 0.3
        return [(w / 2 - neck / 2, 0), (w / 2 + neck / 2, 0), (w / 2 + neck / 2, h * 0.22), (w, h * 0.38), (w, h), (0, h), (0, h * 0.38), (w / 2 - neck / 2, h * 0.22)]
    if shape == "carton":
        return [(0, h * 0.18), (w / 2, 0), (w, h * 0.18), (w, h), (0, h)]
    if shape == "pouch":
        return [(w * 0.1, 0), (w * 0.9, 0), (w, h), (0, h)]
    return [(0, 0), (w, 0), (w, h), (0, h)]


def _logo(draw: ImageDraw.ImageDraw, logo: str, cx: float, cy: float, r: float, fill) -> None:
    if logo == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif logo == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif logo == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif logo == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif logo == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # star
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = np.pi / 5 * k - np.pi / 2
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        draw.polygon(pts, fill=fill)


def render_sku(sku: Sku) -> Image.Image:
    """The product's front as an RGBA sprite (transparent outside its outline)."""
    h = SPRITE_HEIGHT
    w = int(round(h * sku.size[0] / sku.size[1]))
    sprite = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    draw.polygon(_outline(sku.shape, w, h), fill=sku.body + (255,))
    if sku.shape in ("can", "jar"):
        lid = tuple(int(c * 0.7) for c in sku.body) if sku.shape == "can" else (200, 200, 205)
        draw.rectangle([0, 0, w, h * 0.08], fill=lid + (255,))
        draw.rectangle([0, h * 0.92, w, h], fill=lid + (255,))
    if sku.shape == "bottle":
        draw.rectangle([w * 0.33, 0, w * 0.67, h * 0.07], fill=sku.accent + (255,))
    top = h * (0.42 if sku.shape == "bottle" else 0.25)
    label = [w * 0.08, top, w * 0.92, h * 0.88]
    draw.rectangle(label, fill=sku.accent + (255,))
    lw, lh = label[2] - label[0], label[3] - label[1]
    stripe_h = lh * 0.06
    for s in range(sku.stripes):
        y = label[1] + lh * 0.05 + s * stripe_h * 1.8
        draw.rectangle([label[0], y, label[2], y + stripe_h], fill=sku.body + (255,))
    _logo(draw, sku.logo, label[0] + lw / 2, label[1] + lh * 0.55, min(lw, lh) * 0.2, sku.body + (255,))
    for bit in range(12):  # pseudo-text: a row of dark dashes spelling the SKU's bits
        if sku.text_bits >> bit & 1:
            x = label[0] + lw * (0.06 + 0.074 * bit)
            draw.rectangle([x, label[3] - lh * 0.16, x + lw * 0.05, label[3] - lh * 0.08], fill=(25, 25, 25, 255))
    return sprite


@dataclass(frozen=True)
class SceneConfig:
    width: int
    height: int
    shelf_rows: int
    occlusion_prob: float
    max_blur: float
    lighting: float


def render_scene(skus: list[Sku], sprites: dict[int, Image.Image], cfg: SceneConfig, rng: np.random.Generator):
    """One shelf image and its boxes as [(category_id, x, y, w, h)]."""
    wall = np.array([rng.integers(150, 220)] * 3) + rng.integers(-20, 20, 3)
    scene = Image.new("RGB", (cfg.width, cfg.height), tuple(int(c) for c in wall.clip(0, 255)))
    draw = ImageDraw.Draw(scene)
    row_h = cfg.height / cfg.shelf_rows
    plank_h = max(4, int(row_h * 0.08))
    plank = tuple(int(c) for c in rng.integers(60, 140, 3))
    boxes = []
    for row in range(cfg.shelf_rows):
        floor = int((row + 1) * row_h) - plank_h
        draw.rectangle([0, floor, cfg.width, floor + plank_h], fill=plank)
        x = int(rng.integers(0, 10))
        while True:
            sku = skus[int(rng.integers(len(skus)))]
            facings = int(rng.integers(1, 4))
            scale = rng.uniform(0.55, 0.85) * row_h / SPRITE_HEIGHT * (0.75 + 0.25 * sku.size[1])
            sprite = sprites[sku.id]
            w, h = max(4, int(sprite.width * scale)), max(4, int(sprite.height * scale))
            if x + w > cfg.width:
                break
            instance = sprite.resize((w, h), Image.BILINEAR)
            shade = rng.uniform(0.85, 1.15)
            instance = ImageEnhance.Brightness(instance).enhance(shade)
            for _ in range(facings):
                if x + w > cfg.width:
                    break
                y = floor - h
                scene.paste(instance, (x, y), instance)
                boxes.append((sku.id, x, y, w, h))
                x += w + int(rng.integers(1, 6))
            x += int(rng.integers(0, 12))
    for _, bx, by, bw, bh in list(boxes):
        if rng.random() < cfg.occlusion_prob:  # a price tag or shelf strip hiding part of the product
            ow, oh = int(bw * rng.uniform(0.3, 0.7)), int(bh * rng.uniform(0.15, 0.35))
            ox = bx + int(rng.integers(0, max(1, bw - ow)))
            oy = by + bh - oh if rng.random() < 0.6 else by + int(rng.integers(0, max(1, bh - oh)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle([ox, oy, ox + ow, oy + oh], fill=colour)
    gradient = np.linspace(1 - cfg.lighting * rng.uniform(0, 1), 1, cfg.width)
    if rng.random() < 0.5:
        gradient = gradient[::-1]
    pixels = np.asarray(scene, dtype=np.float32) * gradient[None, :, None] * rng.uniform(1 - cfg.lighting, 1 + cfg.lighting / 2)
    scene = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    blur = rng.uniform(0, cfg.max_blur)
    if blur > 0.2:
        scene = scene.filter(ImageFilter.GaussianBlur(blur))
    return scene, boxes


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()

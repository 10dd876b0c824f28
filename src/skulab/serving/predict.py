"""`skulab predict IMAGE_OR_FOLDER... [--model URI] [--out results.jsonl] [--draw out_dir/]`.

Loads the packaged model (default: the registered model at its alias), runs it on every file given
(folders are walked, hidden files skipped), a few images at a time so that their crops go through
the recognizer together, and writes one JSON line per image: its path, its products (box,
detector_score, sku, confidence, similarity, alternatives) and the count per SKU. A file that is
not a usable image is named on one line on stderr (and gets an `error` line in the results); the
others are still predicted, and the exit code is 1 if any file failed.
"""

import colorsys
import hashlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from skulab.errors import SkulabError
from skulab.serving.predictor import UNKNOWN, ImageInput, Predictor

DEFAULT_MODEL = "models:/skulab-shelf@champion"


def default_model_uri() -> str:
    """models:/<package.model_name>@<package.alias> from the repo's params.yaml, else the shipped default."""
    from skulab.params import PARAMS_FILE, load_params
    from skulab.tracking import repo_root

    try:
        package = load_params(repo_root() / PARAMS_FILE, sections=("package",)).package
    except SkulabError:
        return DEFAULT_MODEL
    return f"models:/{package.model_name}@{package.alias}"


def image_files(paths: list[str]) -> list[Path]:
    """The files to predict, in the order given (a folder's files sorted, hidden ones left out); a
    path that is neither a folder nor a readable file fails later, as a bad file."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise SkulabError(f"{path}: folder has no files")
            files += found
        else:  # a missing or unreadable file is reported with the others, as a bad file
            files.append(path)
    return files


def load_predictor(uri: str) -> Predictor:
    """The Predictor inside a packaged model: a registry URI (models:/name@alias, models:/name/3), runs:/... or a folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from skulab.serving.pyfunc import ShelfModel
    from skulab.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        first = str(getattr(exc, "message", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; run `dvc repro package` first" if uri.startswith("models:/") else ""
        raise SkulabError(f"--model {uri}: cannot load ({first}){hint}") from None
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if not isinstance(python_model, ShelfModel):
        raise SkulabError(f"--model {uri}: not a skulab shelf model (built by the package stage)")
    return python_model.predictor


def _colour(sku: str) -> tuple[int, int, int]:
    if sku == UNKNOWN:
        return (255, 0, 255)
    hue = int(hashlib.sha256(sku.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw(path: Path, record: dict, out: Path, min_side: int = 800) -> None:
    """The image with each product's box and label as PNG: SKU and confidence, or `unknown` and its
    nearest-prototype similarity (magenta). Small images are enlarged so that the labels can be read."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    scale = max(1, -(-min_side // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = ImageDraw.Draw(image)
    for product in record["products"]:
        x, y, w, h = (v * scale for v in product["box"])
        colour = _colour(product["sku"])
        canvas.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        score = product["similarity"] if product["sku"] == UNKNOWN else product["confidence"]
        label = f"{product['sku']} {score:.2f}"
        left, top, right, bottom = canvas.textbbox((x + 3, y + 2), label)
        canvas.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
        canvas.text((x + 3, y + 2), label, fill=colour)
    image.save(out, format="PNG")


def _draw_name(path: Path, used: set[str]) -> str:
    name, n = f"{path.stem}.png", 1
    while name in used:
        name, n = f"{path.stem}_{n}.png", n + 1
    used.add(name)
    return name


def _predict(predictor: Predictor, items: list[ImageInput]) -> list[dict]:
    """The records of a few images together; if that fails, of each alone, so one odd file fails alone."""
    try:
        return predictor.predict_images(items)
    except Exception:
        if len(items) == 1:
            raise
    records = []
    for item in items:
        try:
            records += predictor.predict_images([item])
        except Exception as exc:  # noqa: BLE001 (reported per file, the others go on)
            records.append({"image": 0, "products": [], "counts": {}, "error": f"prediction failed ({type(exc).__name__}: {' '.join(str(exc).split())})"})
    return records


def predict_files(predictor: Predictor, files: list[Path], writer, pictures: Path | None = None, chunk: int = 8) -> dict:
    """Write one JSON line per file to `writer` (and its picture under `pictures`); return the counts."""
    used: set[str] = set()
    counts = {"images": len(files), "failed": 0, "products": 0, "unknown": 0}
    with tqdm(total=len(files), desc="predict", unit="image", file=sys.stderr) as bar:
        for start in range(0, len(files), chunk):
            batch = files[start : start + chunk]
            items = []
            for path in batch:
                try:
                    items.append(ImageInput(path.read_bytes()))
                except OSError as exc:
                    items.append(ImageInput(None, error=f"unreadable ({exc.strerror or exc})"))
            for path, record in zip(batch, _predict(predictor, items)):
                record = {"path": str(path), **{k: v for k, v in record.items() if k != "image"}}
                if record["error"] is not None:
                    counts["failed"] += 1
                    tqdm.write(f"error: {path}: {record['error']}", file=sys.stderr)
                else:
                    counts["products"] += len(record["products"])
                    counts["unknown"] += record["counts"].get(UNKNOWN, 0)
                    if pictures:
                        draw(path, record, pictures / _draw_name(path, used))
                writer.write(json.dumps(record) + "\n")
            writer.flush()
            bar.update(len(batch))
    return counts


def run(inputs: list[str], model: str | None, out: str, draw_dir: str | None, chunk: int = 8) -> int:
    """`skulab predict`: predict every file; return the exit code (1 if any file failed)."""
    files = image_files(inputs)
    predictor = load_predictor(model or default_model_uri())
    pictures = Path(draw_dir) if draw_dir else None
    if pictures:
        pictures.mkdir(parents=True, exist_ok=True)
    if out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    writer = sys.stdout if out == "-" else open(out, "w")
    try:
        counts = predict_files(predictor, files, writer, pictures, chunk)
    finally:
        if writer is not sys.stdout:
            writer.close()
    where = "stdout" if out == "-" else out
    drawn = f"; pictures in {pictures}/" if pictures else ""
    total, failed = counts["images"], counts["failed"]
    print(
        f"{total - failed} of {total} images predicted: {counts['products']} products ({counts['unknown']} unknown); results: {where}{drawn}",
        file=sys.stderr,
    )
    if failed:
        print(f"error: {failed} of {total} files failed (named above)", file=sys.stderr)
    return 1 if failed else 0

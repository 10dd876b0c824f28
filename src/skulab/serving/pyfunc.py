"""The MLflow pyfunc model: its request form, its answer, signature and input example.

Request: a DataFrame with a column `image` holding each image's encoded bytes (JPEG, PNG, ...) in
base64 (a `data:image/...;base64,` prefix is allowed), and optionally a column `boxes` holding a
JSON list of [x, y, w, h] pixel boxes to recognize instead of detecting (empty or null: detect, or
for a recognizer-only package take the whole image). Over HTTP (`mlflow models serve`) that is

    {"dataframe_records": [{"image": "<base64>"}, {"image": "<base64>", "boxes": "[[10, 20, 40, 80]]"}]}

Answer: one record per image, in request order (`{"predictions": [...]}` over HTTP):

    {"image": 0, "width": 320, "height": 256,
     "products": [{"box": [x, y, w, h], "detector_score": 0.99, "sku": "sku_07", "confidence": 0.97,
                   "similarity": 0.91, "alternatives": [{"sku": "sku_07", "score": 0.97}, ...]}, ...],
     "counts": {"sku_07": 4, "unknown": 1, ...},
     "error": null}

An image that cannot be used gets `error` (one line) and no products; the others are still answered.
"""

import base64
import binascii
import json
import math

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Map, Object, Property, Schema

from skulab.serving.predictor import ImageInput, Predictor

IMAGE_COLUMN, BOXES_COLUMN = "image", "boxes"
ARTIFACTS = ("settings", "prototypes", "recognizer", "detector_config", "detector_weights")


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request_frame(images: list[bytes]) -> pd.DataFrame:
    """The model's input for some encoded images (what a client sends as dataframe_records)."""
    return pd.DataFrame({IMAGE_COLUMN: [encode_image(data) for data in images]})


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _decode_base64(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def inputs_from_frame(frame: pd.DataFrame) -> list[ImageInput]:
    """Each row's image bytes and optional boxes; a row that cannot be read carries its error."""
    if IMAGE_COLUMN not in frame.columns:
        raise ValueError(f"the request needs a column '{IMAGE_COLUMN}' of base64-encoded images; got columns {list(frame.columns)}")
    boxes = frame[BOXES_COLUMN] if BOXES_COLUMN in frame.columns else [None] * len(frame)
    inputs = []
    for value, row_boxes in zip(frame[IMAGE_COLUMN], boxes):
        try:
            data = _decode_base64(value)
        except ValueError as exc:
            inputs.append(ImageInput(None, error=f"{IMAGE_COLUMN}: {exc}"))
            continue
        if _missing(row_boxes):
            inputs.append(ImageInput(data))
            continue
        try:
            parsed = json.loads(row_boxes) if isinstance(row_boxes, str) else row_boxes
        except json.JSONDecodeError as exc:
            inputs.append(ImageInput(None, error=f"{BOXES_COLUMN}: invalid JSON ({exc.msg})"))
            continue
        inputs.append(ImageInput(data, boxes=parsed))  # checked against the image once it is decoded
    return inputs


class ShelfModel(mlflow.pyfunc.PythonModel):
    """Detector + recognizer of the ablation's winner; see this module's docstring for the request form."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.load({name: path for name, path in context.artifacts.items() if name in ARTIFACTS})

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict]:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.predictor.predict_images(inputs_from_frame(model_input))


def signature() -> ModelSignature:
    alternative = Object([Property("sku", "string"), Property("score", "double")])
    product = Object(
        [
            Property("box", Array("double")),
            Property("detector_score", "double", required=False),
            Property("sku", "string"),
            Property("confidence", "double"),
            Property("similarity", "double"),
            Property("alternatives", Array(alternative)),
        ]
    )
    inputs = Schema([ColSpec("string", IMAGE_COLUMN), ColSpec("string", BOXES_COLUMN, required=False)])
    outputs = Schema(
        [
            ColSpec("long", "image"),
            ColSpec("long", "width", required=False),
            ColSpec("long", "height", required=False),
            ColSpec(Array(product), "products"),
            ColSpec(Map("long"), "counts"),
            ColSpec("string", "error", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)

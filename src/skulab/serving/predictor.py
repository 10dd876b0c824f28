"""Inference of the packaged shelf model: find products, name each one, count them.

Everything reuses the code that trained and scored the two cells, so the package gives, for a test
image, the boxes of the detector cell and the labels of the recognizer cell:

- the detector is mmdet's `init_detector` / `inference_detector` on the cell's resolved config and
  best weights, fed the image as mmdet's `LoadImageFromFile` decodes it (OpenCV);
- detections are kept as the crop stage keeps them (`crop.score_threshold`, at most
  `crop.max_detections` by score, none smaller than `crop.min_box_size`) and cut with
  `crop.padded_box` from the image as the crop stage reads it (Pillow);
- each crop is resized as `recognition.data.load_crops` stores it, embedded with
  `recognition.evaluation.embed` and answered with `recognition.evaluation.predict` against the
  train-set class prototypes: the head's answer and confidence, and the nearest prototype with its
  cosine similarity;
- a crop whose nearest-prototype similarity is below the reject threshold (calibrated on val by the
  package stage) is labelled `unknown`.
"""

import contextlib
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from skulab.crop import cut, padded_box
from skulab.recognition import evaluation
from skulab.recognition.augment import eval_transform
from skulab.recognition.head import build_recognizer

UNKNOWN = "unknown"
SETTINGS_FORMAT = 2  # 2: crop.stored_size and the resolved score threshold in settings["crop"]


class InputError(Exception):
    """One image of a request cannot be used (not an image, truncated, a box outside it)."""


@dataclass
class ImageInput:
    """One image to predict: its encoded bytes, and optionally the boxes to recognize instead of detecting."""

    data: bytes | None
    boxes: list[list[float]] | None = None  # [x, y, w, h] in pixels
    error: str | None = None  # set when the request already failed for this image (bad base64, bad boxes)


@dataclass
class Timings:
    """Seconds spent per step since the predictor was made (or since reset())."""

    images: int = 0
    decode: float = 0.0
    detector: float = 0.0
    crop: float = 0.0
    recognizer: float = 0.0
    crops: int = 0

    def reset(self) -> None:
        self.images, self.decode, self.detector, self.crop, self.recognizer, self.crops = 0, 0.0, 0.0, 0.0, 0.0, 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_image(data: bytes, bgr: bool) -> tuple[Image.Image, np.ndarray | None]:
    """The RGB image as the crop stage reads it (Pillow, fully decoded: a truncated file fails here),
    and, when `bgr`, the BGR array mmdet's LoadImageFromFile makes of the same bytes (OpenCV).

    OpenCV turns a photo by its EXIF orientation; the Pillow image is turned the same way, so boxes
    found on the one cut the right pixels out of the other (a no-op for images without EXIF).
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        raise InputError("not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise InputError(f"corrupt or truncated image ({_one_line(exc)})") from None
    if not bgr:
        return image, None
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # = mmcv.imfrombytes(flag='color')
    if array is None or array.shape[:2] != (image.height, image.width):  # a format Pillow reads and OpenCV does not
        array = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    return image, array


def check_boxes(boxes, width: int, height: int) -> list[list[float]]:
    """Boxes given in a request: a list of [x, y, w, h] (pixels) each overlapping the image."""
    if not isinstance(boxes, list):
        raise InputError(f"boxes: expected a list of [x, y, w, h], got {type(boxes).__name__}")
    checked = []
    for i, box in enumerate(boxes):
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise InputError(f"boxes[{i}]: expected [x, y, w, h] numbers, got {box!r}")
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise InputError(f"boxes[{i}]: {box} is empty or outside the {width}x{height} image")
        checked.append([x, y, w, h])
    return checked


class Detector:
    """mmdet's inference API on one detector cell's resolved config and weights."""

    def __init__(self, config: Path, weights: Path, device: str):
        from mmcv.transforms import Compose
        from mmdet.apis import init_detector
        from mmdet.utils import get_test_pipeline_cfg

        from skulab.detection.compat import patch_mmengine

        patch_mmengine()  # checkpoints load weights-only (the packaged one holds only tensors and class names)
        # mmengine print()s a line for every checkpoint it loads: noise on the console (and `skulab
        # predict` writes its results to stdout). Errors still raise.
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = init_detector(str(config), str(weights), device=device)
        pipeline = get_test_pipeline_cfg(self.model.cfg.copy())
        pipeline[0].type = "mmdet.LoadImageFromNDArray"  # what inference_detector does for arrays, built once
        self.pipeline = Compose(pipeline)

    def __call__(self, bgr: np.ndarray) -> tuple[list[list[float]], list[float]]:
        """Every detection as COCO [x, y, w, h] and its score, converted as mmdet's CocoMetric writes them."""
        from mmdet.apis import inference_detector

        pred = inference_detector(self.model, bgr, test_pipeline=self.pipeline).pred_instances
        boxes = []
        for row in pred.bboxes.cpu().numpy():
            x1, y1, x2, y2 = row.tolist()
            boxes.append([x1, y1, x2 - x1, y2 - y1])
        return boxes, [float(score) for score in pred.scores.cpu().numpy()]


def default_device() -> str:
    return os.environ.get("SKULAB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """The packaged model: settings (shelf.json), class prototypes, recognizer weights, optional detector."""

    def __init__(self, settings: dict, prototypes: torch.Tensor, recognizer_state: dict, detector: Detector | None = None, device: str = "cpu"):
        if settings.get("format") != SETTINGS_FORMAT:
            raise ValueError(f"shelf settings format {settings.get('format')!r}; this code reads format {SETTINGS_FORMAT}")
        self.settings = settings
        self.class_names: list[str] = settings["class_names"]
        recognizer = settings["recognizer"]
        self.model = build_recognizer(recognizer, len(self.class_names), pretrained="none")  # no "head": bnneck (before heads)
        self.model.load_state_dict(recognizer_state)
        self.model.to(device).eval()
        self.has_classifier = bool(recognizer["has_classifier"])
        self.transform = eval_transform(recognizer["image_size"], recognizer.get("crop_pct", 1.0))  # no crop_pct: resize only (before it)
        self.storage = int(settings["crop"]["stored_size"])  # as the crop stage stored the cell's crops
        self.prototypes = prototypes.float().cpu()
        self.prototype_labels = torch.arange(len(self.class_names))
        self.crop = settings["crop"]
        self.reject = settings["reject"]["threshold"]
        self.top_k = min(int(settings["top_k"]), len(self.class_names))
        self.batch_size = int(settings["batch_size"])
        self.detector = detector
        self.timings = Timings()

    @classmethod
    def load(cls, files: dict[str, str], device: str | None = None) -> "Predictor":
        """From the packaged artifacts: settings, prototypes, recognizer, and detector_config/detector_weights if any."""
        device = device or default_device()
        settings = json.loads(Path(files["settings"]).read_text())
        prototypes = torch.load(files["prototypes"], map_location="cpu", weights_only=True)
        state = torch.load(files["recognizer"], map_location="cpu", weights_only=True)
        detector = None
        if settings["detector"] is not None:
            detector = Detector(Path(files["detector_config"]), Path(files["detector_weights"]), device)
        return cls(settings, prototypes, state, detector, device)

    # --- steps ---------------------------------------------------------------------------------

    def detect(self, bgr: np.ndarray) -> tuple[list[list[float]], list[float]]:
        """The detections the crop stage would crop: above the score threshold, the best
        max_detections by score, none smaller than min_box_size."""
        boxes, scores = self.detector(bgr)
        kept = [(box, score) for box, score in zip(boxes, scores) if score >= self.crop["score_threshold"]]
        kept = sorted(kept, key=lambda item: -item[1])[: self.crop["max_detections"]]
        kept = [(box, score) for box, score in kept if min(box[2], box[3]) >= self.crop["min_box_size"]]
        return [box for box, _ in kept], [score for _, score in kept]

    def cut(self, image: Image.Image, boxes: list[list[float]]) -> torch.Tensor:
        """Crops (N x 3 x S x S, uint8) as the crop stage cuts them and the recognizer cells store them."""
        crops = np.empty((len(boxes), 3, self.storage, self.storage), dtype=np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            box = padded_box(x, y, w, h, self.crop["padding"], image.width, image.height)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"box {[x, y, w, h]} covers no pixel of the {image.width}x{image.height} image")
            crops[i] = cut(image, box, self.storage).transpose(2, 0, 1)
        return torch.from_numpy(crops)

    def recognize(self, crops: torch.Tensor) -> list[dict]:
        """Per crop: the answer (or unknown), its confidence, the nearest-prototype similarity and the top-k classes."""
        if len(crops) == 0:
            return []
        features, logits = evaluation.embed(self.model, crops, self.transform, self.has_classifier, batch_size=self.batch_size)
        n = len(self.class_names)
        answer = evaluation.predict(self.prototypes, self.prototype_labels, features, logits, n, self.has_classifier)
        if self.has_classifier:  # the scores the head's answer comes from
            scores = logits.softmax(dim=1)
        else:
            scores = (1 + evaluation.prototype_similarities(self.prototypes, self.prototype_labels, features, n)) / 2
        top_scores, top_index = scores.topk(self.top_k, dim=1)
        results = []
        for i in range(len(crops)):
            similarity = float(answer["proto_similarity"][i])
            rejected = self.reject is not None and similarity < self.reject
            results.append(
                {
                    "sku": UNKNOWN if rejected else self.class_names[int(answer["pred"][i])],
                    "confidence": round(float(answer["confidence"][i]), 5),
                    "similarity": round(similarity, 5),
                    "alternatives": [
                        {"sku": self.class_names[int(k)], "score": round(float(s), 5)} for s, k in zip(top_scores[i], top_index[i])
                    ],
                }
            )
        return results

    # --- whole images --------------------------------------------------------------------------

    def predict_images(self, inputs: list[ImageInput]) -> list[dict]:
        """One record per input image, in order: its products (box, detector_score, sku, confidence,
        similarity, alternatives), the count per SKU, and `error` (null, or why this image failed).

        Crops of all the images go through the recognizer together, `batch_size` at a time.
        """
        records, crops = [], []
        for index, item in enumerate(inputs):
            record = {"image": index, "width": None, "height": None, "products": [], "counts": {}, "error": item.error}
            records.append(record)
            if item.error is not None:
                continue
            started = time.perf_counter()
            try:
                use_detector = self.detector is not None and item.boxes is None
                image, bgr = decode_image(item.data, bgr=use_detector)
                record["width"], record["height"] = image.width, image.height
                decoded = time.perf_counter()
                self.timings.decode += decoded - started
                if item.boxes is not None:
                    boxes = check_boxes(item.boxes, image.width, image.height)
                    scores = [None] * len(boxes)
                elif use_detector:
                    boxes, scores = self.detect(bgr)
                    self.timings.detector += time.perf_counter() - decoded
                else:  # recognizer only: the whole image is the product
                    boxes, scores = [[0.0, 0.0, float(image.width), float(image.height)]], [None]
                cut_started = time.perf_counter()
                image_crops = self.cut(image, boxes)
                self.timings.crop += time.perf_counter() - cut_started
            except InputError as exc:
                record["error"] = str(exc)
                continue
            finally:
                self.timings.images += 1
            record["products"] = [
                {"box": [round(v, 2) for v in box], "detector_score": None if score is None else round(score, 5)}
                for box, score in zip(boxes, scores)
            ]
            crops.append(image_crops)
        started = time.perf_counter()
        named = self.recognize(torch.cat(crops)) if crops else []
        self.timings.recognizer += time.perf_counter() - started
        self.timings.crops += len(named)
        slots = iter(product for record in records if record["error"] is None for product in record["products"])
        for product, answer in zip(slots, named):
            product.update(answer)
        for record in records:
            counts = Counter(product["sku"] for product in record["products"])
            record["counts"] = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        return records

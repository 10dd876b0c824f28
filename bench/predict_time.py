"""Benchmark: images/s of the packaged model (`skulab predict`) on the default test images on the CPU,
against calling the two models directly.

Three paths over the same images, in this process, after a warm-up, in alternating rounds (the
median round is reported):

- direct: mmdet's `inference_detector` on the image file with the detector cell's resolved config
  and best.pth, the detections kept as the crop stage keeps them, then one plain forward pass of
  the recognizer cell's best.pt over that image's crops (arg-max of the logits). No prototypes,
  reject, top-k or JSON;
- predict: what `skulab predict` runs once the model is loaded (`serving.predict.predict_files`:
  read, decode, detect, crop, recognize the crops of 8 images together, top-k, reject, one JSON
  line per image), on the model loaded from the registry;
- served form: the pyfunc's `predict` on a DataFrame of base64 images, 8 per request, as
  `mlflow models serve` calls it (no HTTP).

The packaging overhead is predict / direct - 1. The detector and recognizer times of the predict
path come from the model's own timers; the direct path times its two calls. Then the whole
`skulab predict` command is timed once as a user runs it (start-up and model loading included).
Writes metrics/bench/predict_time.{json,md}.

Run by hand after `dvc repro`: `.venv/bin/python bench/predict_time.py` (about 3 minutes on 2 cores).
"""

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "src"))
os.chdir(REPO)

from skulab.crop import padded_box  # noqa: E402
from skulab.layout import RECOGNIZER_MODELS  # noqa: E402
from skulab.recognition.augment import eval_transform  # noqa: E402
from skulab.recognition.head import Recognizer  # noqa: E402
from skulab.serving.predict import default_model_uri, load_predictor, predict_files  # noqa: E402
from skulab.serving.pyfunc import request_frame  # noqa: E402


class Direct:
    """The two cells called directly: mmdet's inference API and a plain forward pass."""

    def __init__(self, package: dict, settings: dict):
        from mmcv.transforms import Compose
        from mmdet.apis import init_detector
        from mmdet.utils import get_test_pipeline_cfg

        from skulab.detection.compat import patch_mmengine, trust_checkpoints_under

        folder = REPO / "models/detector" / package["detector"]
        patch_mmengine()
        trust_checkpoints_under(folder)
        self.detector = init_detector(str(folder / "config.py"), str(folder / "best.pth"), device="cpu")
        self.pipeline = Compose(get_test_pipeline_cfg(self.detector.cfg.copy()))  # LoadImageFromFile: file paths
        checkpoint = torch.load(RECOGNIZER_MODELS / package["recognizer"] / "best.pt", map_location="cpu", weights_only=False)
        config = checkpoint["config"]
        self.recognizer = Recognizer(config["backbone"], len(checkpoint["class_names"]), config["embedding_dim"]).eval()
        self.recognizer.load_state_dict(checkpoint["model"])
        self.transform = eval_transform(config["image_size"], config.get("crop_pct", 1.0))
        self.crop = settings["crop"]
        self.storage = self.crop["stored_size"]
        self.detector_s = self.recognizer_s = 0.0
        self.products = 0

    @torch.no_grad()
    def __call__(self, path: Path) -> list[int]:
        from mmdet.apis import inference_detector

        started = time.perf_counter()
        pred = inference_detector(self.detector, str(path), test_pipeline=self.pipeline).pred_instances
        detected = time.perf_counter()
        crop = self.crop
        boxes = [(b.tolist(), float(s)) for b, s in zip(pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy()) if s >= crop["score_threshold"]]
        boxes = sorted(boxes, key=lambda item: -item[1])[: crop["max_detections"]]
        boxes = [(x1, y1, x2 - x1, y2 - y1) for (x1, y1, x2, y2), _ in boxes if min(x2 - x1, y2 - y1) >= crop["min_box_size"]]
        labels = []
        if boxes:
            image = Image.open(path).convert("RGB")
            crops = np.stack([
                np.asarray(image.crop(padded_box(*box, crop["padding"], image.width, image.height)).resize((self.storage, self.storage), Image.BILINEAR))
                for box in boxes
            ])
            out = self.recognizer(self.transform(torch.from_numpy(crops).permute(0, 3, 1, 2)))
            labels = out.logits.argmax(dim=1).tolist()
        self.detector_s += detected - started
        self.recognizer_s += time.perf_counter() - detected
        self.products += len(boxes)
        return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", default=str(REPO / "data/prepared/images/test"), help="folder of test images")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path (median reported)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/predict_time"), help="output path stem")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.images).iterdir() if p.is_file())
    package = json.loads((REPO / "models/package/package.json").read_text())
    uri = default_model_uri()
    started = time.perf_counter()
    predictor = load_predictor(uri)
    load_seconds = time.perf_counter() - started
    if predictor.detector is None:
        raise SystemExit("the packaged model has no detector; this benchmark compares the detector + recognizer path")
    import mlflow

    served = mlflow.pyfunc.load_model(uri)
    direct = Direct(package, predictor.settings)
    frames = [request_frame([p.read_bytes() for p in files[i : i + 8]]) for i in range(0, len(files), 8)]

    def run_direct():
        direct.detector_s = direct.recognizer_s = 0.0
        direct.products = 0
        for path in files:
            direct(path)
        return {"detector_s": direct.detector_s, "recognizer_s": direct.recognizer_s, "products": direct.products}

    def run_predict():
        predictor.timings.reset()
        counts = predict_files(predictor, files, io.StringIO(), chunk=8)
        t = predictor.timings
        return {"detector_s": t.detector, "recognizer_s": t.recognizer, "decode_s": t.decode, "crop_s": t.crop, "products": counts["products"], "unknown": counts["unknown"]}

    def run_served():
        served_predictor = served.unwrap_python_model().predictor
        served_predictor.timings.reset()
        products = sum(len(record["products"]) for frame in frames for record in served.predict(frame))
        t = served_predictor.timings
        return {"detector_s": t.detector, "recognizer_s": t.recognizer, "decode_s": t.decode, "crop_s": t.crop, "products": products}

    paths = {"direct": run_direct, "predict": run_predict, "served_form": run_served}
    for run in paths.values():  # warm-up: lazy initialisation, caches
        run()
    results = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, run in paths.items():
            started = time.perf_counter()
            detail = run()
            results[name].append({"seconds": time.perf_counter() - started, **detail})
    summary = {}
    for name, rounds in results.items():
        median = sorted(rounds, key=lambda r: r["seconds"])[len(rounds) // 2]
        summary[name] = {
            "seconds": round(median["seconds"], 3),
            "images_per_s": round(len(files) / median["seconds"], 2),
            "ms_per_image": round(1000 * median["seconds"] / len(files), 1),
            "rounds_seconds": [round(r["seconds"], 3) for r in rounds],
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in median.items() if k != "seconds"},
        }
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    subprocess.run([BIN / "skulab", "predict", args.images, "--out", os.devnull], cwd=REPO, env=env, check=True, stderr=subprocess.DEVNULL)
    cli_seconds = time.perf_counter() - started
    overhead = summary["predict"]["seconds"] / summary["direct"]["seconds"] - 1
    served_overhead = summary["served_form"]["seconds"] / summary["direct"]["seconds"] - 1
    result = {
        "images": len(files),
        "image_folder": str(Path(args.images).resolve().relative_to(REPO)) if Path(args.images).resolve().is_relative_to(REPO) else args.images,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model_uri": uri,
        "model_version": package["version"],
        "detector": package["detector"],
        "recognizer": package["recognizer"],
        "rounds": args.rounds,
        "model_load_seconds": round(load_seconds, 2),
        **summary,
        "overhead_percent": round(100 * overhead, 1),
        "served_form_overhead_percent": round(100 * served_overhead, 1),
        "within_10_percent": overhead <= 0.10,
        "cli_wall_seconds": round(cli_seconds, 2),
        "cli_images_per_s": round(len(files) / cli_seconds, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    d, p, s = summary["direct"], summary["predict"], summary["served_form"]
    lines = [
        f"# Packaged model vs the two models called directly: {len(files)} test images, {result['cores']} cores (torch threads: {result['torch_threads']})",
        "",
        f"Model `{uri}` (version {package['version']}): detector {package['detector']} + recognizer {package['recognizer']}. "
        f"Median of {args.rounds} alternating rounds after a warm-up, model loading excluded; see bench/predict_time.py for what each path does.",
        "",
        "| path | images/s | ms/image | detector s | recognizer s | decode + crop s | products | vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| direct: `inference_detector` + plain forward | {d['images_per_s']:.2f} | {d['ms_per_image']:.1f} | {d['detector_s']:.3f} | {d['recognizer_s']:.3f} | (in the two) | {d['products']} | |",
        f"| `skulab predict` (loaded model) | {p['images_per_s']:.2f} | {p['ms_per_image']:.1f} | {p['detector_s']:.3f} | {p['recognizer_s']:.3f} | {p['decode_s'] + p['crop_s']:.3f} | {p['products']} | {100 * overhead:+.1f}% |",
        f"| pyfunc `predict`, base64 DataFrame (served form) | {s['images_per_s']:.2f} | {s['ms_per_image']:.1f} | {s['detector_s']:.3f} | {s['recognizer_s']:.3f} | {s['decode_s'] + s['crop_s']:.3f} | {s['products']} | {100 * served_overhead:+.1f}% |",
        "",
        "The direct path's detector time includes decoding the file (mmdet's LoadImageFromFile) and its recognizer time "
        "decoding it again with Pillow and cutting the crops; the packaged paths time decoding and cropping apart. "
        "The packaged paths batch the crops of 8 images per recognizer call, the direct path those of one image.",
        "",
        f"Packaging overhead: {100 * overhead:+.1f}% ({'within' if overhead <= 0.10 else 'NOT within'} the 10% budget). "
        f"The whole command as a user runs it, `skulab predict {result['image_folder']} --out /dev/null` (start-up, loading the model from "
        f"the registry: {load_seconds:.1f} s in process), took {cli_seconds:.1f} s: {result['cli_images_per_s']:.2f} images/s.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

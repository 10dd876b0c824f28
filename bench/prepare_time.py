"""Benchmark: seconds per 1,000 images for `prepare`, synthetic generation and each import format.

Generates a synthetic dataset of --images images, writes it as COCO, VOC, YOLO and class folders
(with the test suite's writers), imports each, and writes metrics/bench/prepare_time.{json,md}.
Run by hand: `.venv/bin/python bench/prepare_time.py`.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_external import write_coco, write_folders, write_voc, write_yolo  # noqa: E402

from skulab.crop import crop_dataset  # noqa: E402
from skulab.data.prepare import prepare  # noqa: E402
from skulab.params import PrepareParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000, help="scenes to generate (split 70/15/15)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/prepare_time"), help="output path stem")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "params.yaml").read_text())["prepare"]
    n = args.images
    base["synthetic"]["scenes"] = {"train": n * 70 // 100, "val": n * 15 // 100, "test": n - n * 70 // 100 - n * 15 // 100}
    results = {}
    with tempfile.TemporaryDirectory(prefix="skulab-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        prepare(PrepareParams.model_validate(base), tmp / "synthetic")
        results["synthetic"] = time.perf_counter() - started
        coco = {s: json.loads((tmp / "synthetic/annotations" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
        crop_params = yaml.safe_load((REPO / "params.yaml").read_text())["crop"]
        from skulab.params import CropParams

        crop_dataset(tmp / "synthetic", tmp / "crops", CropParams.model_validate(crop_params), "bench")
        sources = {
            "coco": write_coco(tmp / "coco", coco, tmp / "synthetic"),
            "voc": write_voc(tmp / "voc", coco, tmp / "synthetic"),
            "yolo": write_yolo(tmp / "yolo", coco, tmp / "synthetic"),
            "folders": write_folders(tmp / "folders", tmp / "crops"),
        }
        counts = {"folders": sum(1 for p in (tmp / "folders").rglob("*.png"))}
        for source, path in sources.items():
            params = PrepareParams.model_validate({**base, "source": source, "external": {**base["external"], "path": str(path)}})
            started = time.perf_counter()
            prepare(params, tmp / f"out-{source}")
            results[source] = time.perf_counter() - started
    per_1000 = {k: round(v * 1000 / counts.get(k, n), 2) for k, v in results.items()}
    report = {"images": n, "folders_images": counts["folders"], "seconds": {k: round(v, 2) for k, v in results.items()}, "seconds_per_1000_images": per_1000}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# `prepare` time per 1,000 images (2 cores)", "", "| source | images | seconds | s / 1,000 images |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {counts.get(k, n)} | {results[k]:.1f} | {per_1000[k]:.1f} |" for k in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

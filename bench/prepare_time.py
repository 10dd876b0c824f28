"""Benchmark `prepare`: time per image for each import format, and time and peak memory on large photos.

Two modes; each rewrites its own section of metrics/bench/prepare_time.{json,md} and keeps the other's.

- `--mode formats` (default, --images 1000): generates a synthetic dataset of --images scenes (timed),
  writes it as COCO, VOC, YOLO and class folders (with the test suite's writers; the folders from the
  crop stage's crops), and imports each with the code at --baseline and with this checkout's (as
  below): seconds per 1,000 images, and Image.open calls and decodes per source image.
- `--mode large` (--images 200): generates --images shelf photos of 4000 x 3000 (synthetic scenes
  drawn at 1000 x 750, enlarged 4x, with sensor-like noise so that each JPEG is about as large and as
  slow to decode as a phone photo's, 3-4 MB) as a COCO source, before and outside any timing. Then
  imports them with `prepare` in a fresh child process per run, alternately with the code at
  --baseline (`git archive` of src/skulab; default the last commit before one decode per image) and
  with this checkout's, --repeats times each. Per run: wall time of `prepare` and the child's peak
  resident memory (ru_maxrss: the whole process, Pillow's pixel buffers included, which tracemalloc
  would not see), also as growth over its value before `prepare` (imports done); the Image.open calls
  on source images, and the decodes (ImageFile.load calls with pixels left to read) of source and
  output images with the pixels decoded. `--rotated` adds the same photos stored turned, with EXIF orientation 6 (a phone held
  upright), which the import now turns back: one full decode and one JPEG encode each.

Run by hand: `nice -n 5 .venv/bin/python bench/prepare_time.py --mode large --rotated` (about 20
minutes on 2 busy cores, 6 of them generating the photos; `--data DIR` keeps them for a rerun), and
`nice -n 5 .venv/bin/python bench/prepare_time.py` (about 8 minutes).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASELINE = "6efe9a8"  # the last commit before `prepare` decoded each image once
WIDTH, HEIGHT = 4000, 3000
MIB = 1024 * 1024


# ---- the child: one `prepare` run, measured -----------------------------------------------------


def child(spec: dict) -> None:
    """Run prepare once with whatever `skulab` is first on sys.path; print one JSON line.

    Counts, by the file's folder (the source, or the output being written), every Image.open of a
    file and every decode (an ImageFile.load with pixels left to read) with the pixels decoded."""
    import resource

    from PIL import Image, ImageFile

    counts = {"source_opens": 0, "source": 0, "output": 0, "source_pixels": 0, "output_pixels": 0}
    source_root = os.path.realpath(spec["source"]) + os.sep
    output_root = os.path.dirname(os.path.realpath(spec["out"])) + os.sep  # prepare writes a sibling, then moves it
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def counting_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)) and os.path.realpath(fp).startswith(source_root):
            counts["source_opens"] += 1
        return real_open(fp, *args, **kwargs)

    def counting_load(self):
        pending = bool(self.tile)
        pixels = real_load(self)
        name = os.path.realpath(getattr(self, "filename", "") or "/")
        where = "source" if name.startswith(source_root) else "output" if name.startswith(output_root) else None
        if pending and where:
            counts[where] += 1
            counts[f"{where}_pixels"] += self.size[0] * self.size[1]
        return pixels

    Image.open, ImageFile.ImageFile.load = counting_open, counting_load
    import skulab
    from skulab.data.prepare import prepare
    from skulab.params import PrepareParams

    params = PrepareParams.model_validate(spec["params"])
    start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    card, report = prepare(params, Path(spec["out"]))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    boxes = sum(split["boxes"] for split in card["splits"].values())
    print(json.dumps({"code": str(Path(skulab.__file__).parent), "seconds": seconds, "rss_start_kib": start_kib, "rss_peak_kib": peak_kib,
                      "boxes_imported": boxes, "items_skipped": len(report["skipped"]), "skipped": report["counts"], **counts}))


def run_alternating(codes: dict[str, Path], source: Path, out: Path, params: dict, repeats: int, label: str) -> dict[str, list[dict]]:
    """Each code `repeats` times, alternating which goes first, each run in a fresh child process."""
    runs = {name: [] for name in codes}
    for repeat in range(repeats):
        for name, code in (list(codes.items()) if repeat % 2 == 0 else list(codes.items())[::-1]):
            runs[name].append(run_child(code, source, out, params))
            print(f"{label} {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    return runs


CODES = ("before", "after")


# ---- large photos -------------------------------------------------------------------------------


def make_photos(root: Path, count: int, rotated: bool, seed: int = 0) -> dict:
    """`count` shelf photos of 4000 x 3000 as a COCO source under `root` (70/15/15 split); reused when
    `root` already holds the same set. `rotated`: each is stored turned a quarter (3000 x 4000 shown,
    4000 x 3000 stored) with EXIF orientation 6, its boxes drawn on the shown picture."""
    import numpy as np
    from PIL import Image

    from skulab.data.synthetic import SceneConfig, make_skus, render_scene, render_sku
    from skulab.io import write_json_atomic

    wanted = {"images": count, "rotated": rotated, "seed": seed, "size": [WIDTH, HEIGHT]}
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["wanted"] == wanted:
        return json.loads(manifest.read_text())
    if root.exists():
        shutil.rmtree(root)
    skus = make_skus(23, 2, seed)
    sprites = {sku.id: render_sku(sku) for sku in skus}
    shown_w, shown_h = (HEIGHT, WIDTH) if rotated else (WIDTH, HEIGHT)
    scene_cfg = SceneConfig(shown_w // 4, shown_h // 4, 4 if rotated else 3, 0.25, 1.2, 0.35)
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(HEIGHT + 64, WIDTH + 64, 3), dtype=np.int16)  # shifted per photo
    categories = [{"id": s.id, "name": s.name, "supercategory": "product"} for s in skus]
    exif = Image.Exif()
    exif[0x0112] = 6
    counts = {"train": count * 70 // 100, "val": count * 15 // 100}
    counts["test"] = count - counts["train"] - counts["val"]
    total_bytes, boxes_total, started = 0, 0, time.perf_counter()
    for split_index, (split, n) in enumerate(counts.items()):
        images, annotations = [], []
        for index in range(n):
            scene, boxes = render_scene(skus, sprites, scene_cfg, np.random.default_rng([seed, split_index, index]))
            shown = scene.resize((shown_w, shown_h), Image.BILINEAR)
            stored = shown.transpose(Image.Transpose.ROTATE_90) if rotated else shown  # orientation 6 turns it back
            dy, dx = rng.integers(0, 64, size=2)
            pixels = np.asarray(stored, dtype=np.int16) + noise[dy : dy + HEIGHT, dx : dx + WIDTH]
            stored = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            file_name = f"{split}/{index:06d}.jpg"
            path = root / "images" / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            stored.save(path, format="JPEG", quality=92, **({"exif": exif.tobytes()} if rotated else {}))
            total_bytes += path.stat().st_size
            images.append({"id": index + 1, "file_name": file_name, "width": shown_w, "height": shown_h})
            for category_id, x, y, w, h in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category_id,
                                    "bbox": [4 * x, 4 * y, 4 * w, 4 * h], "area": 16 * w * h, "iscrowd": 0})
        boxes_total += len(annotations)
        write_json_atomic(root / "annotations" / f"{split}.json", {"images": images, "annotations": annotations, "categories": categories})
        print(f"generated {split}: {n} photos ({time.perf_counter() - started:.0f} s so far)", flush=True)
    info = {"wanted": wanted, "jpeg_mb_mean": round(total_bytes / count / 1e6, 2), "boxes": boxes_total, "generate_seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(manifest, info)
    return info


def baseline_tree(rev: str, tmp: Path) -> tuple[Path, str]:
    """src/skulab at `rev`, extracted under `tmp`; returns the folder for PYTHONPATH and the full commit."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", f"{rev}^{{commit}}"], capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src/skulab"], capture_output=True, check=True).stdout
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "src", commit


def baseline_and_current(rev: str, tmp: Path, report: dict) -> dict[str, Path]:
    old_code, commit = baseline_tree(rev, tmp / "baseline")
    report["baseline"] = {"rev": rev, "commit": commit}
    return {"before": old_code, "after": REPO / "src"}


def run_child(code: Path, source: Path, out: Path, params: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}  # before the editable install's path
    spec = json.dumps({"source": str(source), "out": str(out), "params": params})
    result = subprocess.run([sys.executable, __file__, "--child", spec], env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"prepare failed ({code}):\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(measured["code"]).resolve() != (code / "skulab").resolve():
        raise SystemExit(f"the child ran {measured['code']}, not {code / 'skulab'}")
    shutil.rmtree(out)
    return measured


def summarize(runs: list[dict], images: int) -> dict:
    def mib(kib: int) -> float:
        return round(kib / 1024, 1)

    return {
        "seconds_per_image": round(min(r["seconds"] for r in runs) / images, 3),
        "seconds_per_image_median": round(statistics.median(r["seconds"] for r in runs) / images, 3),
        "peak_rss_mib": mib(max(r["rss_peak_kib"] for r in runs)),
        "peak_rss_growth_mib": mib(max(r["rss_peak_kib"] - r["rss_start_kib"] for r in runs)),
        "opens_per_source_image": round(runs[0]["source_opens"] / images, 2),
        "decodes_per_source_image": round(runs[0]["source"] / images, 2),
        "decoded_pixels_per_source_pixel": round(runs[0]["source_pixels"] / (images * WIDTH * HEIGHT), 4),
        "output_decodes": runs[0]["output"],
        "output_decoded_megapixels": round(runs[0]["output_pixels"] / 1e6, 2),
        "boxes_imported": runs[0]["boxes_imported"],
        "items_skipped": runs[0]["items_skipped"],
        "skipped": runs[0]["skipped"],
    }


def bench_large(args, base: dict) -> dict:
    report = {"measured": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
              "images": args.images, "size": [WIDTH, HEIGHT], "repeats": args.repeats, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="skulab-bench-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else tmp / "data"
        codes = baseline_and_current(args.baseline, tmp, report)
        for name in ["upright", "rotated"] if args.rotated else ["upright"]:
            source = data / name
            info = make_photos(source, args.images, rotated=name == "rotated")
            # skip: the code before reads a rotated photo's boxes in the stored frame, where many lie outside
            params = {**base, "source": "coco", "external": {**base["external"], "path": str(source), "on_bad_item": "skip"}}
            runs = run_alternating(codes, source, tmp / "out" / "prepared", params, args.repeats, name)
            report["datasets"][name] = {"jpeg_mb_mean": info["jpeg_mb_mean"], "boxes": info["boxes"], "runs": runs,
                                        "summary": {label: summarize(r, args.images) for label, r in runs.items()}}
    return report


def _skipped(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "0"


def large_markdown(large: dict) -> list[str]:
    w, h = large["size"]
    one = w * h * 3 / MIB
    lines = [
        f"## Large photos: {large['images']} shelf photos of {w} x {h}, JPEG, imported as COCO",
        "",
        f"Measured {large['measured']} by `bench/prepare_time.py --mode large` on {large['cpus']} CPUs shared with other jobs "
        f"(load average {large['load_average_at_start']} at the start), under `nice -n 5`. Before: the code at "
        f"`{large['baseline']['rev']}`; after: this checkout; {large['repeats']} run(s) of each, alternating, in fresh processes. "
        "Time: the faster run (median beside it). Peak memory: the child process's ru_maxrss (all of it: Pillow's pixel buffers "
        f"are C allocations, which tracemalloc would miss), and its growth during `prepare`. One decoded {w} x {h} RGB image "
        f"is {one:.1f} MiB.",
        "",
        "| photos | code | s / image (median) | peak RSS MiB | growth during prepare MiB | opens / image | decodes / image | decoded pixels / image pixel | contact sheet decodes (Mpx) | boxes imported | items skipped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (n for n in ("upright", "rotated") if n in large["datasets"]):
        dataset = large["datasets"][name]
        label = f"{name} ({dataset['jpeg_mb_mean']} MB)" if name == "upright" else f"EXIF-rotated, orientation 6 ({dataset['jpeg_mb_mean']} MB)"
        for code in CODES:
            s = dataset["summary"][code]
            lines.append(
                f"| {label} | {code} | {s['seconds_per_image']:.3f} ({s['seconds_per_image_median']:.3f}) | {s['peak_rss_mib']:.0f} | "
                f"{s['peak_rss_growth_mib']:.0f} | {s['opens_per_source_image']:g} | {s['decodes_per_source_image']:g} | {s['decoded_pixels_per_source_pixel']:g} | "
                f"{s['output_decodes']} ({s['output_decoded_megapixels']:g}) | {s['boxes_imported']} of {dataset['boxes']} | {_skipped(s['skipped'])} |"
            )
    if "rotated" in large["datasets"]:
        lines += ["", "Before, a rotated photo was imported with its stored size (4000 x 3000) and as stored, while OpenCV (mmdet) "
                  "shows it turned: its boxes were checked, clipped and cropped in the wrong frame. After, it is turned once, "
                  "re-encoded (JPEG quality 95) and imported upright, which costs the full decode and the encode."]
    return lines


# ---- import formats (small images) --------------------------------------------------------------


def bench_formats(args, base: dict) -> dict:
    """Synthetic generation timed here (this checkout); each import format timed before and after."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_external import write_coco, write_folders, write_voc, write_yolo

    from skulab.crop import crop_dataset
    from skulab.data.prepare import prepare
    from skulab.params import CropParams, PrepareParams

    n = args.images
    base = {**base, "synthetic": {**base["synthetic"], "scenes": {"train": n * 70 // 100, "val": n * 15 // 100, "test": n - n * 70 // 100 - n * 15 // 100}}}
    report = {"measured": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
              "images": n, "repeats": args.repeats, "sources": {}}
    with tempfile.TemporaryDirectory(prefix="skulab-bench-") as tmp:
        tmp = Path(tmp)
        codes = baseline_and_current(args.baseline, tmp, report)
        started = time.perf_counter()
        prepare(PrepareParams.model_validate(base), tmp / "synthetic")
        report["synthetic_seconds"] = round(time.perf_counter() - started, 2)
        coco = {s: json.loads((tmp / "synthetic/annotations" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
        crop_params = yaml.safe_load((REPO / "params.yaml").read_text())["crop"]

        crop_dataset(tmp / "synthetic", tmp / "crops", CropParams.model_validate(crop_params), "bench")
        sources = {
            "coco": write_coco(tmp / "coco", coco, tmp / "synthetic"),
            "voc": write_voc(tmp / "voc", coco, tmp / "synthetic"),
            "yolo": write_yolo(tmp / "yolo", coco, tmp / "synthetic"),
            "folders": write_folders(tmp / "folders", tmp / "crops"),
        }
        for source, path in sources.items():
            images = sum(1 for p in path.rglob("*") if p.suffix in (".jpg", ".png"))
            params = {**base, "source": source, "external": {**base["external"], "path": str(path)}}
            runs = run_alternating(codes, path, tmp / "out" / "prepared", params, args.repeats, source)
            report["sources"][source] = {"images": images, "runs": runs, "summary": {
                code: {"seconds": round(min(r["seconds"] for r in code_runs), 2),
                       "seconds_per_1000_images": round(min(r["seconds"] for r in code_runs) * 1000 / images, 2),
                       "opens_per_image": round(code_runs[0]["source_opens"] / images, 2),
                       "decodes_per_image": round(code_runs[0]["source"] / images, 2),
                       "decoded_pixels_per_image_pixel": round(code_runs[0]["source_pixels"] / _pixels(path), 4)}
                for code, code_runs in runs.items()}}
    return report


def _pixels(folder: Path) -> int:
    from PIL import Image

    total = 0
    for path in folder.rglob("*"):
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                total += image.width * image.height
    return total


def formats_markdown(formats: dict) -> list[str]:
    if "sources" not in formats:  # measured before the before/after layout: one column
        lines = ["## Import formats: time per 1,000 small images (2 cores)", "", "| source | images | seconds | s / 1,000 images |", "|---|---:|---:|---:|"]
        for k, seconds in formats["seconds"].items():
            lines.append(f"| {k} | {formats['folders_images'] if k == 'folders' else formats['images']} | {seconds:.1f} | {formats['seconds_per_1000_images'][k]:.1f} |")
        return lines
    lines = [
        f"## Import formats: {formats['images']} small synthetic scenes (and their crops as class folders)",
        "",
        f"Measured {formats['measured']} by `bench/prepare_time.py --mode formats` on {formats['cpus']} CPUs shared with other jobs "
        f"(load average {formats['load_average_at_start']} at the start). Before: the code at `{formats['baseline']['rev']}`; after: "
        f"this checkout; {formats['repeats']} run(s) of each, alternating, in fresh processes; the faster run. Generating the synthetic "
        f"dataset itself (this checkout, unchanged by the one-decode work) took {formats['synthetic_seconds']:.1f} s.",
        "",
        "| source | images | s / 1,000 images before | after | opens / image before | after | decodes / image before | after | decoded pixels / image pixel before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for source in (s for s in ("coco", "voc", "yolo", "folders") if s in formats["sources"]):  # the JSON's keys are sorted
        entry = formats["sources"][source]
        b, a = entry["summary"]["before"], entry["summary"]["after"]
        lines.append(
            f"| {source} | {entry['images']} | {b['seconds_per_1000_images']:.1f} | {a['seconds_per_1000_images']:.1f} | "
            f"{b['opens_per_image']:g} | {a['opens_per_image']:g} | {b['decodes_per_image']:g} | {a['decodes_per_image']:g} | "
            f"{b['decoded_pixels_per_image_pixel']:g} | {a['decoded_pixels_per_image_pixel']:g} |"
        )
    return lines


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["formats", "large"], default="formats")
    parser.add_argument("--images", type=int, help="scenes (formats, default 1000) or photos (large, default 200)")
    parser.add_argument("--baseline", default=BASELINE, help="large: the git revision measured as 'before'")
    parser.add_argument("--repeats", type=int, default=2, help="large: runs of each code")
    parser.add_argument("--rotated", action="store_true", help="large: also the photos stored turned, with EXIF orientation 6")
    parser.add_argument("--data", help="large: folder for the generated photos, kept and reused (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/prepare_time"), help="output path stem")
    args = parser.parse_args()
    args.images = args.images or (1000 if args.mode == "formats" else 200)
    sys.path.insert(0, str(REPO / "src"))
    from skulab.io import write_json_atomic, write_text_atomic

    base = yaml.safe_load((REPO / "params.yaml").read_text())["prepare"]
    out = Path(args.out)
    report = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    if "seconds" in report:  # the single-table layout this file had before the large-photo mode
        report = {"formats": report}
    report[args.mode] = bench_formats(args, base) if args.mode == "formats" else bench_large(args, base)
    write_json_atomic(out.with_suffix(".json"), report)
    lines = ["# `prepare` time and memory", "", "Written by `bench/prepare_time.py` (see its docstring for the method).", ""]
    if "large" in report:
        lines += large_markdown(report["large"]) + [""]
    if "formats" in report:
        lines += formats_markdown(report["formats"]) + [""]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Benchmark: the crop stage's crops/s, old (one PNG file per crop, one process) against the crop
store (decoded crops in one memory-mapped array per split, a process pool, one decode per image),
and a recognizer epoch reading the store memory-mapped against the same crops held in RAM.

Both crop paths cut the ground-truth crops of every split of data/prepared (crop.detector none),
side by side in this run; the old path's time also counts decoding its PNGs back into the
recognizer's squares (what every cell did before training). The epoch comparison trains the default
recognizer (mobilenetv3_small, basic augmentation, batch 64) on the train split for one epoch per
round, alternating RAM and memory-mapped rounds; the median round is reported.
Writes metrics/bench/crop_time.{json,md}.

Run by hand after `dvc repro prepare`: `.venv/bin/python bench/crop_time.py` (about 5 minutes on 2 cores).
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.chdir(REPO)

from skulab.crop import crop_dataset  # noqa: E402
from skulab.io import write_json_atomic, write_text_atomic  # noqa: E402
from skulab.layout import PREPARED  # noqa: E402
from skulab.params import CropParams  # noqa: E402
from skulab.recognition.augment import train_transform  # noqa: E402
from skulab.recognition.data import CropSet, TransformedCrops, load_crops  # noqa: E402
from skulab.recognition.head import Recognizer  # noqa: E402

OLD_COMMIT = "6efe9a8"  # the last commit with one PNG per crop


def old_crop_module(tmp: Path):
    """crop.py as it was at OLD_COMMIT, imported from git (it runs on today's helpers)."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/skulab/crop.py"], capture_output=True, text=True, check=True).stdout
    path = tmp / "old_crop.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_crop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_old_store(crops: Path, size: int) -> int:
    """What each recognizer cell did with the old crops: decode every PNG into a size x size square."""
    count = 0
    for png in sorted((crops / "images").rglob("*.png")):
        with Image.open(png) as image:
            np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        count += 1
    return count


def one_epoch(train: CropSet, seed: int) -> float:
    torch.manual_seed(seed)
    model = Recognizer("mobilenetv3_small", len(train.class_names), 128, "none")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    loader = DataLoader(TransformedCrops(train, train_transform("basic", 64)), batch_size=64, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    started = time.perf_counter()
    for images, labels in loader:
        out = model(images)
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="epochs per data path (median reported)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/crop_time"), help="output path stem")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())["crop"]
    size = params["stored_size"]
    results: dict = {"cpus": os.cpu_count(), "stored_size": size}
    with tempfile.TemporaryDirectory(prefix="skulab-bench-") as tmp:
        tmp = Path(tmp)
        old = old_crop_module(tmp)
        old_params = CropParams.model_validate({**params, "detector": "none", "score_threshold": 0.3})
        started = time.perf_counter()
        old.crop_dataset(PREPARED, tmp / "old", old_params, "bench")
        old_cut = time.perf_counter() - started
        started = time.perf_counter()
        crops = decode_old_store(tmp / "old", size)
        old_decode = time.perf_counter() - started
        results["crops"] = crops
        results["old"] = {"cut_s": round(old_cut, 2), "decode_s": round(old_decode, 2), "crops_per_s": round(crops / old_cut, 1), "crops_per_s_with_decode": round(crops / (old_cut + old_decode), 1)}
        for workers in (1, 0):
            new_params = CropParams.model_validate({**params, "detector": "none", "workers": workers})
            started = time.perf_counter()
            crop_dataset(PREPARED, tmp / f"new{workers}", new_params, "bench")
            seconds = time.perf_counter() - started
            label = "store_1_process" if workers == 1 else f"store_{os.cpu_count()}_processes"
            results[label] = {"cut_s": round(seconds, 2), "crops_per_s": round(crops / seconds, 1)}

        mapped = load_crops(tmp / "new0", "train")
        in_ram = CropSet(mapped.images.clone(), mapped.labels, mapped.class_names, mapped.crops)
        times = {"ram": [], "memmap": []}
        one_epoch(in_ram, 0)  # warm-up: page cache, allocator, threads
        for round_ in range(args.rounds):
            for name, data in (("ram", in_ram), ("memmap", mapped)):
                times[name].append(one_epoch(data, round_))
        results["epoch_s"] = {name: round(statistics.median(values), 3) for name, values in times.items()}
        results["epoch_s_rounds"] = times
        results["memmap_vs_ram"] = round(results["epoch_s"]["memmap"] / results["epoch_s"]["ram"], 3)
    best = max((k for k in results if k.startswith("store_")), key=lambda k: results[k]["crops_per_s"])
    results["speedup"] = round(results[best]["crops_per_s"] / results["old"]["crops_per_s"], 2)
    results["speedup_with_decode"] = round(results[best]["crops_per_s"] / results["old"]["crops_per_s_with_decode"], 2)
    write_json_atomic(f"{args.out}.json", results)
    lines = [
        f"# Crop stage and crop store ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)",
        "",
        f"{crops} ground-truth crops of data/prepared (all splits), stored at {size} px.",
        "",
        "| path | seconds | crops/s |",
        "|---|---|---|",
        f"| old: one PNG per crop, 1 process | {results['old']['cut_s']} | {results['old']['crops_per_s']} |",
        f"| old + decoding the PNGs back (each recognizer cell did this) | {round(old_cut + old_decode, 2)} | {results['old']['crops_per_s_with_decode']} |",
        *(f"| store, {k.split('_')[1]} process(es) | {results[k]['cut_s']} | {results[k]['crops_per_s']} |" for k in results if k.startswith("store_")),
        "",
        f"Speed-up of the store over the old crop stage: {results['speedup']}x ({results['speedup_with_decode']}x counting the cells' PNG decoding).",
        "",
        f"Recognizer epoch (train split, median of {args.rounds}): in RAM {results['epoch_s']['ram']} s, memory-mapped "
        f"{results['epoch_s']['memmap']} s: {results['memmap_vs_ram']}x.",
        "",
    ]
    write_text_atomic(f"{args.out}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

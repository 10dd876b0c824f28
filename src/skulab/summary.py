"""The evaluate stage: every recognizer cell into one table (mean and std over seeds per variant),
and every detector cell into another."""

import csv
import json
import statistics
from pathlib import Path

from skulab.errors import SkulabError
from skulab.io import read_json, write_json_atomic, write_text_atomic
from skulab.layout import recognizer_cell
from skulab.plots import plot_detectors, plot_summary, plot_val_curves

TEST_METRICS = ("test_top1", "test_proto_acc", "test_precision_at_1", "test_map_at_r", "test_e2e_recall", "test_e2e_precision")
DETECTOR_METRICS = ("val_bbox_mAP", "test_bbox_mAP", "test_bbox_mAP_50", "test_bbox_mAP_75", "test_bbox_AR_100", "seconds_per_iter", "train_seconds")


def _mean_std(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def load_histories(metrics_root: Path, cells: dict[str, dict[int, dict]]) -> dict[str, dict[int, list[dict]]]:
    histories: dict[str, dict[int, list[dict]]] = {}
    for variant, by_seed in cells.items():
        for seed in by_seed:
            with open(metrics_root / recognizer_cell(variant, seed) / "history.csv", newline="") as f:
                histories.setdefault(variant, {})[seed] = list(csv.DictReader(f))
    return histories


def load_cells(metrics_root: Path, variants: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    cells: dict[str, dict[int, dict]] = {}
    for variant in variants:
        for seed in seeds:
            folder = metrics_root / recognizer_cell(variant, seed)
            try:
                final = json.loads((folder / "final.json").read_text())
                cell = json.loads((folder / "cell.json").read_text())
            except FileNotFoundError as exc:
                raise SkulabError(f"{exc.filename}: missing; run train_recognizer@{folder.name} (dvc repro)") from None
            cells.setdefault(variant, {})[seed] = {**cell, **final}
    return cells


def load_detectors(metrics_root: Path, names: list[str]) -> dict[str, dict]:
    detectors = {}
    for name in names:
        path = metrics_root / name / "final.json"
        if not path.is_file():
            raise SkulabError(f"{path}: missing; run train_detector@{name} (dvc repro)")
        final = read_json(path)
        detectors[name] = {key: final[key] for key in ("best_epoch", "run_id", *DETECTOR_METRICS)}
    return detectors


def ranking_stats(entry: dict, rank_by: str) -> dict:
    """Metric-only heads have no top-1: they rank by nearest-prototype accuracy, which every head has."""
    return entry.get(rank_by, entry["test_proto_acc"])


def summarize(cells: dict[str, dict[int, dict]], rank_by: str, detectors: dict[str, dict]) -> dict:
    variants = {}
    for variant, by_seed in cells.items():
        entry = {
            "overrides": next(iter(by_seed.values()))["overrides"],
            "runs": {str(seed): cell["run_id"] for seed, cell in by_seed.items()},
        }
        for metric in TEST_METRICS:
            values = [cell[metric] for cell in by_seed.values() if metric in cell]
            if values:
                entry[metric] = _mean_std(values)
        variants[variant] = entry
    ranked = sorted(variants, key=lambda v: -ranking_stats(variants[v], rank_by)["mean"])
    test_detector = {cell["test_detector"] for by_seed in cells.values() for cell in by_seed.values()}
    return {
        "rank_by": rank_by,
        "best_variant": ranked[0],
        "ranking": ranked,
        "variants": variants,
        "test_crops_from": ", ".join(sorted(test_detector)),
        "detectors": dict(sorted(detectors.items(), key=lambda item: -item[1]["val_bbox_mAP"])),
    }


def _cell(stats: dict | None) -> str:
    return "n/a" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def detector_table(detectors: dict[str, dict]) -> list[str]:
    lines = [
        "# Detectors (COCO bbox on test with the best epoch by val mAP)",
        "",
        "| detector | " + " | ".join(m.replace("test_bbox_", "test ").replace("val_bbox_", "val ") for m in DETECTOR_METRICS) + " | best epoch |",
        "|---|" + "---:|" * (len(DETECTOR_METRICS) + 1),
    ]
    for name, entry in detectors.items():
        cells = [f"{entry[m]:.3f}" if m.endswith(("mAP", "50", "75", "100")) else f"{entry[m]:.2f}" for m in DETECTOR_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['best_epoch']} |")
    return lines


def markdown_table(summary: dict) -> str:
    crops = summary["test_crops_from"]
    source = "ground-truth boxes" if crops == "none" else f"the boxes of detector {crops} (e2e: background crops and missed boxes count as wrong)"
    lines = [
        f"# Recognizer ablation (ranked by {summary['rank_by']}, mean ± std over seeds)",
        "",
        f"Test crops come from {source}.",
        "",
        "| rank | variant | differs from base | " + " | ".join(m.removeprefix("test_") for m in TEST_METRICS) + " | seeds |",
        "|---:|---|---|" + "---:|" * len(TEST_METRICS) + "---:|",
    ]
    for rank, name in enumerate(summary["ranking"], 1):
        entry = summary["variants"][name]
        overrides = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "(base)"
        metrics = " | ".join(_cell(entry.get(m)) for m in TEST_METRICS)
        lines.append(f"| {rank} | {name} | {overrides} | {metrics} | {len(entry['runs'])} |")
    if summary["detectors"]:
        lines += ["", *detector_table(summary["detectors"])]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, histories: dict[str, dict[int, list[dict]]], out_dir: Path) -> list[Path]:
    paths = [out_dir / "summary.json", out_dir / "summary.md", out_dir / "summary.png", out_dir / "val_curves.png", out_dir / "detectors.png"]
    write_json_atomic(paths[0], summary)
    write_text_atomic(paths[1], markdown_table(summary))
    stats = {name: ranking_stats(entry, summary["rank_by"]) for name, entry in summary["variants"].items()}
    plot_summary(stats, f"{summary['rank_by']} (metric-only heads: test_proto_acc)", paths[2])
    plot_val_curves(histories, "val_proto_acc", paths[3])
    plot_detectors(summary["detectors"], ("val_bbox_mAP", "test_bbox_mAP", "test_bbox_mAP_50"), paths[4])
    return paths

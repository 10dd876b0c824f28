"""The evaluate stage: every recognizer cell into one table, mean and std over seeds per variant."""

import csv
import json
import statistics
from pathlib import Path

from skulab.errors import SkulabError
from skulab.io import write_json_atomic, write_text_atomic
from skulab.layout import recognizer_cell
from skulab.plots import plot_summary, plot_val_curves

TEST_METRICS = ("test_top1", "test_proto_acc", "test_precision_at_1", "test_map_at_r")


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


def ranking_stats(entry: dict, rank_by: str) -> dict:
    """Metric-only heads have no top-1: they rank by nearest-prototype accuracy, which every head has."""
    return entry.get(rank_by, entry["test_proto_acc"])


def summarize(cells: dict[str, dict[int, dict]], rank_by: str) -> dict:
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
    return {"rank_by": rank_by, "best_variant": ranked[0], "ranking": ranked, "variants": variants}


def _cell(stats: dict | None) -> str:
    return "n/a" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown_table(summary: dict) -> str:
    lines = [
        f"# Recognizer ablation (ranked by {summary['rank_by']}, mean ± std over seeds)",
        "",
        "| rank | variant | differs from base | " + " | ".join(m.removeprefix("test_") for m in TEST_METRICS) + " | seeds |",
        "|---:|---|---|" + "---:|" * len(TEST_METRICS) + "---:|",
    ]
    for rank, name in enumerate(summary["ranking"], 1):
        entry = summary["variants"][name]
        overrides = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "(base)"
        metrics = " | ".join(_cell(entry.get(m)) for m in TEST_METRICS)
        lines.append(f"| {rank} | {name} | {overrides} | {metrics} | {len(entry['runs'])} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, histories: dict[str, dict[int, list[dict]]], out_dir: Path) -> list[Path]:
    paths = [out_dir / "summary.json", out_dir / "summary.md", out_dir / "summary.png", out_dir / "val_curves.png"]
    write_json_atomic(paths[0], summary)
    write_text_atomic(paths[1], markdown_table(summary))
    stats = {name: ranking_stats(entry, summary["rank_by"]) for name, entry in summary["variants"].items()}
    plot_summary(stats, f"{summary['rank_by']} (metric-only heads: test_proto_acc)", paths[2])
    plot_val_curves(histories, "val_proto_acc", paths[3])
    return paths

"""The evaluate stage's numbers, kept apart from their rendering (report.py, plots.py).

Every recognizer variant is described over its seeds, compared with the baseline variant seed by
seed, ranked by a validation metric that every head has (test metrics are reported beside it, never
used to select) and flagged when its validation curve is still rising. Detector cells and the
end-to-end shelf metrics join them. Statistics come from `skulab.stats`, shelf metrics from
`skulab.shelf`.
"""

from pathlib import Path

from skulab import axes, shelf, stats
from skulab.detection import SELECT_METRIC
from skulab.data.coco import load_split
from skulab.errors import SkulabError
from skulab.io import read_csv, read_json
from skulab.layout import recognizer_cell
from skulab.recognition.data import load_classes

# Balanced accuracy (the mean per-class recall of the head's answer) sits beside top-1: on imbalanced
# real data top-1 is carried by the frequent classes.
VAL_METRICS = ("val_proto_acc", "val_precision_at_1", "val_map_at_r", "val_top1", "val_balanced_acc")
TEST_METRICS = (
    "test_proto_acc", "test_top1", "test_balanced_acc", "test_precision_at_1", "test_map_at_r",
    "test_e2e_recall", "test_e2e_precision", "test_gt_proto_acc", "test_gt_top1", "test_gt_balanced_acc",
)
# The detector numbers summary.json keeps from each final.json, in the order of the detector tables'
# columns (report.py). Detectors are listed and flagged by their val mAP, as recognizers by rank_by.
DETECTOR_RANK_BY = SELECT_METRIC  # detectors are ranked by what picks them
DETECTOR_COLUMNS = (DETECTOR_RANK_BY, "test_bbox_mAP", "test_bbox_mAP_50", "test_bbox_mAP_75", "test_bbox_AR_100", "seconds_per_iter", "train_seconds")
SHELF_METRICS = ("mAP", "mAP50", "count_accuracy")

# Keys an axis's methods read that set the whole cell rather than that axis (the augmentations read
# image_size, the input resolution): a variant changing one is "other" in the report.
CELL_WIDE_KEYS = frozenset({"image_size"})


def axis_keys() -> dict[str, frozenset[str]]:
    """Which ablation axis each recognizer key belongs to (README, "The recognizer grid"): the key
    choosing the axis's method and every key its methods read, from the records in axes.py (read at
    call time, so a newly registered method's keys follow). A key in none of them counts as "other";
    a variant changing keys of two axes is "mixed"."""
    return {
        axis.label: frozenset({axis.key}.union(*(entry.reads for entry in axis.entries.values()))) - CELL_WIDE_KEYS
        for axis in axes.AXES.values()
        if axis.section == "recognizer"
    }


def axis_order() -> tuple[str, ...]:
    return (*axis_keys(), "other", "mixed")


_UNSET = object()


# --- loading ---------------------------------------------------------------------------------

def load_cells(metrics_root: Path, variants: list[str], seeds: list[int], base: dict | None = None) -> dict[str, dict[int, dict]]:
    """cell.json + final.json of each listed cell; a removed variant's stale folder is never read.

    With the recognizer `base`, each cell's overrides keep only the keys that differ from it.
    """
    cells: dict[str, dict[int, dict]] = {}
    for variant in variants:
        for seed in seeds:
            folder = metrics_root / recognizer_cell(variant, seed)
            try:
                cell = {**read_json(folder / "cell.json"), **read_json(folder / "final.json")}
            except FileNotFoundError as exc:
                raise SkulabError(f"{exc.filename}: missing; run train_recognizer@{folder.name} (dvc repro)") from None
            if base is not None:
                cell["overrides"] = effective_overrides(cell["overrides"], base)
            cells.setdefault(variant, {})[seed] = cell
    sources = {cell.get("test_detector", "none") for by_seed in cells.values() for cell in by_seed.values()}
    if len(sources) > 1:
        raise SkulabError(f"{metrics_root}: cells were tested on crops from different detectors ({', '.join(sorted(sources))}); run dvc repro")
    return cells


def _read_history(path: Path, stage: str) -> list[dict]:
    """history.csv as rows of floats (an empty cell, e.g. a head without val_top1, is left out)."""
    if not path.is_file():
        raise SkulabError(f"{path}: missing; run {stage} (dvc repro)")
    return [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in read_csv(path)]


def load_histories(metrics_root: Path, cells: dict[str, dict[int, dict]]) -> dict[str, dict[int, list[dict]]]:
    return {
        variant: {
            seed: _read_history(metrics_root / recognizer_cell(variant, seed) / "history.csv", f"train_recognizer@{recognizer_cell(variant, seed)}")
            for seed in by_seed
        }
        for variant, by_seed in cells.items()
    }


def load_detectors(metrics_root: Path, names: list[str]) -> dict[str, dict]:
    detectors = {}
    for name in names:
        path = metrics_root / name / "final.json"
        if not path.is_file():
            raise SkulabError(f"{path}: missing; run train_detector@{name} (dvc repro)")
        final = read_json(path)
        detectors[name] = {key: final[key] for key in ("best_epoch", "run_id", *DETECTOR_COLUMNS) if key in final}
    return detectors


def load_detector_histories(metrics_root: Path, names: list[str]) -> dict[str, list[dict]]:
    return {name: _read_history(metrics_root / name / "history.csv", f"train_detector@{name}") for name in names}


def load_predictions(metrics_root: Path, variant: str, seed: int) -> list[dict]:
    """A cell's test_predictions.csv (every test crop's answer), or a one-line error naming its stage."""
    path = metrics_root / recognizer_cell(variant, seed) / "test_predictions.csv"
    if not path.is_file():
        raise SkulabError(f"{path}: missing; run train_recognizer@{recognizer_cell(variant, seed)} (dvc repro)")
    return read_csv(path, shelf.PREDICTION_FIELDS)


def class_names(crops: Path) -> list[str]:
    """Recognizer class index -> name: data/crops/classes.json sorted by class id."""
    classes = load_classes(crops)
    return [classes[class_id] for class_id in sorted(classes)]


def effective_overrides(overrides: dict, base: dict) -> dict:
    """The keys a variant sets to a value other than the base's: what really makes it a variant."""
    return {key: value for key, value in overrides.items() if base.get(key, _UNSET) != value}


# --- statistics ------------------------------------------------------------------------------

def reported_metric(rank_by: str) -> str:
    """The test counterpart of the validation ranking metric: what the report states as the result."""
    return "test_" + rank_by.removeprefix("val_")


def _values(by_seed: dict[int, dict], metric: str) -> dict[int, float]:
    """Per-seed values of `metric`, leaving out seeds that lack it (e.g. no product among test crops)."""
    return {seed: float(cell[metric]) for seed, cell in by_seed.items() if cell.get(metric) is not None}


def describe_metrics(by_seed: dict[int, dict], metrics: tuple[str, ...]) -> dict[str, dict]:
    described = {}
    for metric in metrics:
        values = _values(by_seed, metric)
        if values:
            described[metric] = stats.describe([values[s] for s in sorted(values)])
    return described


def mean_curve(histories: dict[int, list[dict]], metric: str) -> list[float]:
    """The metric per epoch averaged over seeds, up to the shortest history."""
    curves = [[row[metric] for row in rows if metric in row] for rows in histories.values()]
    curves = [c for c in curves if c]
    length = min((len(c) for c in curves), default=0)
    return [sum(c[i] for c in curves) / len(curves) for i in range(length)]


def differing_keys(overrides: dict, baseline_overrides: dict) -> list[str]:
    """Keys whose value differs from the baseline variant's (a key a variant leaves out has the base value)."""
    keys = set(overrides) | set(baseline_overrides)
    return sorted(k for k in keys if overrides.get(k, _UNSET) != baseline_overrides.get(k, _UNSET))


def axis_of(keys: list[str]) -> str:
    members = axis_keys()
    found = {next((axis for axis, keys_of_axis in members.items() if key in keys_of_axis), "other") for key in keys}
    if len(found) > 1:
        return "mixed"
    return found.pop() if found else "other"


def compare(variant: dict[int, float], baseline: dict[int, float], alpha: float) -> dict | None:
    """Paired difference on the seeds both have; None when they share none."""
    upper, lower, seeds = stats.pair_by_seed(variant, baseline)
    if not seeds:
        return None
    result = stats.paired_comparison(upper, lower)
    return result | {"seeds": seeds, "seeds_needed": stats.seeds_needed(result["diff_mean"], result["diff_std"], alpha=alpha)}


def _adjust(comparisons: dict[str, dict | None]) -> None:
    """Holm over the family in place: adds p_holm and significant to each comparison."""
    adjusted = stats.holm({name: c["p_value"] for name, c in comparisons.items() if c is not None})
    for name, comparison in comparisons.items():
        if comparison is not None:
            comparison["p_holm"] = adjusted[name]
            comparison["significant"] = stats.is_significant(adjusted[name])


def compare_with_baseline(cells: dict[str, dict[int, dict]], baseline: str, metric: str) -> dict[str, dict | None]:
    """Every variant minus the baseline on `metric`, Holm-adjusted over all of them."""
    others = [v for v in cells if v != baseline]
    alpha = stats.ALPHA / max(1, len(others))  # a Holm-safe seeds-needed count
    base = _values(cells[baseline], metric)
    comparisons = {v: compare(_values(cells[v], metric), base, alpha) for v in others}
    _adjust(comparisons)
    return comparisons


def rank(variants: dict[str, dict], rank_by: str) -> list[str]:
    """Best first by the mean of the validation metric; a variant without it goes last."""
    def key(name):
        described = variants[name].get(rank_by)
        return (described is None, -(described or {"mean": 0})["mean"], name)

    return sorted(variants, key=key)


def ranking_gaps(cells: dict[str, dict[int, dict]], ranking: list[str], rank_by: str) -> list[dict]:
    """Each variant against the one ranked just below it, Holm-adjusted over the gaps."""
    pairs = list(zip(ranking, ranking[1:]))
    alpha = stats.ALPHA / max(1, len(pairs))
    gaps = {f"{a}>{b}": compare(_values(cells[a], rank_by), _values(cells[b], rank_by), alpha) for a, b in pairs}
    _adjust(gaps)
    return [{"upper": a, "lower": b, "comparison": gaps[f"{a}>{b}"]} for a, b in pairs]


def best_seed(by_seed: dict[int, dict], rank_by: str) -> int:
    """The seed with the highest validation metric (selection stays on val); ties go to the lowest seed."""
    values = _values(by_seed, rank_by)
    return min(values, key=lambda seed: (-values[seed], seed)) if values else min(by_seed)


def axis_groups(variants: dict[str, dict], baseline: str) -> dict[str, list[str]]:
    """Axis -> its variants, baseline first; only axes some variant changes."""
    groups = {}
    for axis in axis_order():
        members = sorted(name for name, entry in variants.items() if name != baseline and entry["axis"] == axis)
        if members:
            groups[axis] = [baseline, *members]
    return groups


def variant_entry(by_seed: dict[int, dict], histories: dict[int, list[dict]], baseline_overrides: dict, rank_by: str) -> dict:
    overrides = next(iter(by_seed.values()))["overrides"]
    keys = differing_keys(overrides, baseline_overrides)
    return {
        "overrides": overrides,
        "differs_in": keys,
        "axis": axis_of(keys),
        "runs": {str(seed): cell["run_id"] for seed, cell in sorted(by_seed.items())},
        **describe_metrics(by_seed, VAL_METRICS + TEST_METRICS),
        "convergence": stats.convergence(mean_curve(histories, rank_by)),
    }


def summarize(cells: dict[str, dict[int, dict]], histories: dict[str, dict[int, list[dict]]], rank_by: str, baseline: str, detectors: dict[str, dict]) -> dict:
    if baseline not in cells:
        raise SkulabError(f"evaluate.baseline: '{baseline}' is not a recognizer variant; allowed: {', '.join(cells)}")
    base_overrides = next(iter(cells[baseline].values()))["overrides"]
    variants = {name: variant_entry(by_seed, histories.get(name, {}), base_overrides, rank_by) for name, by_seed in cells.items()}
    reported = reported_metric(rank_by)
    for metric in (rank_by, reported):
        for name, comparison in compare_with_baseline(cells, baseline, metric).items():
            variants[name].setdefault("vs_baseline", {})[metric] = comparison
    ranking = rank(variants, rank_by)
    test_detector = {cell.get("test_detector", "none") for by_seed in cells.values() for cell in by_seed.values()}
    return {
        "rank_by": rank_by,
        "reported": reported,
        "baseline": baseline,
        "alpha": stats.ALPHA,
        "best_variant": ranking[0],
        "best_seed": best_seed(cells[ranking[0]], rank_by),
        "ranking": ranking,
        "ranking_gaps": ranking_gaps(cells, ranking, rank_by),
        "variants": variants,
        "axes": axis_groups(variants, baseline),
        "test_crops_from": ", ".join(sorted(test_detector)),
        "detectors": dict(sorted(detectors.items(), key=lambda item: -item[1][DETECTOR_RANK_BY])),
    }


def add_detector_convergence(summary: dict, detector_histories: dict[str, list[dict]], metric: str = DETECTOR_RANK_BY) -> None:
    """Flag detectors whose val mAP still rises at the end of their epochs, as for recognizers."""
    for name, entry in summary["detectors"].items():
        entry["convergence"] = stats.convergence([row[metric] for row in detector_histories.get(name, []) if metric in row])


# --- end to end ------------------------------------------------------------------------------

def shelf_per_cell(cells: dict[str, dict[int, dict]], metrics_root: Path, prepared: Path, crops: Path) -> dict[str, dict[int, dict]]:
    """Shelf mAP and count accuracy of every cell: the detector's test boxes named by its recognizer."""
    gt_coco = load_split(prepared, "test")
    manifest = read_csv(crops / "manifest.csv", ("crop", "split", "source_image", "x", "y", "w", "h", "score"))
    class_ids = shelf.load_class_ids(crops)
    return {
        variant: {seed: shelf.shelf_metrics(gt_coco, manifest, load_predictions(metrics_root, variant, seed), class_ids) for seed in by_seed}
        for variant, by_seed in cells.items()
    }


def add_shelf(summary: dict, per_cell: dict[str, dict[int, dict]]) -> None:
    """Each variant's shelf metrics over seeds, under `shelf` (its accuracies on detected vs ground-truth
    crops are already there as test_* and test_gt_*)."""
    for variant, by_seed in per_cell.items():
        summary["variants"][variant]["shelf"] = describe_metrics(by_seed, SHELF_METRICS)


def confusion_of(metrics_root: Path, variant: str, seed: int, names: list[str], top: int = 10) -> dict:
    """The confusion matrix of one cell's answers on the product crops, and its most-confused pairs."""
    rows = load_predictions(metrics_root, variant, seed)
    matrix, pairs = shelf.confusion([int(r["label"]) for r in rows], [int(r["pred"]) for r in rows], names, top=top)
    return {
        "cell": recognizer_cell(variant, seed), "class_names": names, "matrix": matrix.tolist(),
        "products": int(matrix.sum()), "pairs": [list(p) for p in pairs],
    }

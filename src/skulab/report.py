"""The evaluate stage's words and figures: reports/report.md with its PNGs, and metrics/summary.md.

Everything here renders numbers that `skulab.summary` computed. The generated text is worded so that
it can't mislead: a ranking between two variants whose difference is not significant says so and
how many seeds would resolve it, and every unconverged variant is flagged next to its rank.
"""

from pathlib import Path

from skulab import stats
from skulab.io import atomic_path, write_csv_atomic, write_text_atomic
from skulab.layout import DETECTOR_CURVES, RECOGNIZER_CURVES, REPORT_MD, recognizer_cell
from skulab.plots import MAX_LINES, plot_confusion, plot_epoch_lines, plot_final_bars, plot_mean_curves
from skulab.summary import DETECTOR_COLUMNS, DETECTOR_RANK_BY, SHELF_METRICS


# --- numbers as text -------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def mean_std(described: dict | None) -> str:
    """'0.803 ± 0.004'; one seed has no std: '0.803 ± n/a (n=1)'."""
    if described is None:
        return "n/a"
    if described["std"] is None:
        return f"{fmt(described['mean'])} ± n/a (n={described['n']})"
    return f"{fmt(described['mean'])} ± {fmt(described['std'])}"


def interval(low: float | None, high: float | None, sign: bool = False) -> str:
    return "n/a" if low is None else f"[{fmt(low, sign=sign)}, {fmt(high, sign=sign)}]"


def delta(comparison: dict | None) -> str:
    if comparison is None:
        return "n/a"
    return f"{fmt(comparison['diff_mean'], sign=True)} {interval(comparison['diff_ci_low'], comparison['diff_ci_high'], sign=True)}"


def significance(comparison: dict | None) -> str:
    if comparison is None or comparison["p_value"] is None:
        return "n/a (no test)"
    return "**yes**" if comparison["significant"] else "no"


def seeds_text(comparison: dict | None) -> str:
    """How many seeds would resolve a difference, in words."""
    if comparison is None:
        return "they share no seed, so they can't be compared seed by seed"
    if comparison["diff_std"] is None:
        return "one seed can't estimate the spread; run at least 2 seeds"
    needed = comparison["seeds_needed"]
    if needed is None:
        return "there is no difference to resolve" if abs(comparison["diff_mean"]) < 1e-12 else f"more than {stats.MAX_SEEDS} seeds would be needed"
    return f"about {needed} seeds would resolve it ({stats.POWER:.0%} power)"


def convergence_text(entry: dict) -> str:
    conv = entry["convergence"]
    if not conv["rising"]:
        return "yes"
    return f"**no** (+{conv['slope']:.3f}/epoch)"


def rank_cell(position: int, entry: dict) -> str:
    return f"{position} (not converged)" if entry["convergence"]["rising"] else str(position)


def runs(entry: dict) -> str:
    return ", ".join(f"`{run}`" for run in entry["runs"].values())


def changes(entry: dict) -> str:
    return ", ".join(f"{key}={entry['overrides'].get(key, '(base)')}" for key in entry["differs_in"]) or "(baseline)"


def table(header: list[str], rows: list[list[str]], right: int = 0) -> list[str]:
    """A Markdown table; the last `right` columns are right-aligned numbers."""
    align = ["---"] * (len(header) - right) + ["---:"] * right
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|", *("| " + " | ".join(row) + " |" for row in rows)]


# --- generated wording -----------------------------------------------------------------------

def named(name: str, summary: dict) -> str:
    """A variant with its rank, and its convergence flag right beside it."""
    flag = ", not converged" if summary["variants"][name]["convergence"]["rising"] else ""
    return f"**{name}** (#{summary['ranking'].index(name) + 1}{flag})"


def gap_sentence(gap: dict, summary: dict) -> str:
    """One ranking step in words, with its significance and what would resolve it."""
    comparison = gap["comparison"]
    head = f"{named(gap['upper'], summary)} ranks above {named(gap['lower'], summary)}"
    if comparison is None or comparison["p_value"] is None:
        return f"{head} ({delta(comparison)}), but untested, so **not shown to differ**; {seeds_text(comparison)}."
    test = f"{comparison['test']}, n = {comparison['n']}, Holm-adjusted p = {fmt(comparison['p_holm'])}"
    if comparison["significant"]:
        return f"{head} by {delta(comparison)}: significant ({test})."
    return f"{head} by {delta(comparison)}, but the difference is **not significant** ({test}); {seeds_text(comparison)}."


def reading(summary: dict) -> list[str]:
    """The ranking in words: every step's significance, and the unconverged variants."""
    best, reported = summary["best_variant"], summary["reported"]
    lines = [f"- Best by {summary['rank_by']} (val): {named(best, summary)}, {reported} {mean_std(summary['variants'][best].get(reported))}."]
    lines += [f"- {gap_sentence(gap, summary)}" for gap in summary["ranking_gaps"]]
    rising = [name for name in summary["ranking"] if summary["variants"][name]["convergence"]["rising"]]
    if rising:
        flagged = ", ".join(f"**{n}** (#{summary['ranking'].index(n) + 1})" for n in rising)
        lines.append(
            f"- Not converged at this budget: {flagged}. Their validation curves "
            "still rise over the last epochs, so their ranks may change with more epochs."
        )
    return lines


def method_note(summary: dict) -> list[str]:
    others = len(summary["variants"]) - 1
    return [
        f"Mean ± std over seeds (std n/a for one seed); 95% CI: t-interval of the mean. Δ: the variant minus "
        f"the baseline **{summary['baseline']}**, seed by seed, with its 95% CI. p: a {stats.T_TEST} for n ≥ {stats.SMALL_N} "
        f"pairs, an {stats.SIGN_FLIP} below that (its smallest p is 2 / 2^n: below {stats.SMALL_N} seeds no difference can "
        f"reach α = {summary['alpha']}), Holm-adjusted over the {others} variants compared with the baseline; "
        f"significant at α = {summary['alpha']}. Seeds needed: pairs at which a paired t-test detects the observed Δ "
        f"with {stats.POWER:.0%} power at α / {max(1, others)} (Holm-safe). Below {stats.SMALL_N} seeds a CI that excludes 0 is still not a "
        "significant result: the t-interval assumes normal differences, which so few seeds can't check. Not converged: the mean validation curve gains more than "
        f"{stats.CONVERGENCE_SLOPE} per epoch over the last third of the epochs.",
    ]


# --- figures ---------------------------------------------------------------------------------

def _chunks(names: list[str], baseline: str) -> list[list[str]]:
    """Groups of at most MAX_LINES lines, each with the baseline first."""
    others = [n for n in names if n != baseline]
    size = MAX_LINES - 1
    return [[baseline, *others[i : i + size]] for i in range(0, max(1, len(others)), size)]


def _numbered(stem: str, index: int, count: int) -> str:
    return f"{stem}.png" if count == 1 else f"{stem}_{index + 1}.png"


def figure_names(summary: dict) -> dict:
    """File names under reports/ of every figure, so rendering and writing agree."""
    names: dict = {"ranking": "ranking.png", "axes": {}}
    for axis, members in summary["axes"].items():
        chunks = _chunks(members, summary["baseline"])
        names["axes"][axis] = [
            {"members": chunk, "curves": _numbered(f"axis_{axis}_curves", i, len(chunks)), "final": _numbered(f"axis_{axis}_final", i, len(chunks))}
            for i, chunk in enumerate(chunks)
        ]
    detectors = list(summary["detectors"])
    groups = [detectors[i : i + MAX_LINES] for i in range(0, len(detectors), MAX_LINES)]
    if groups:
        names["detectors"] = [{"members": group, "file": _numbered("detectors_val_map", i, len(groups))} for i, group in enumerate(groups)]
    if summary.get("confusion"):
        names["confusion"] = "confusion.png"
    return names


def _bar(summary: dict, cells: dict, name: str) -> dict:
    metrics = {}
    for metric in (summary["rank_by"], summary["reported"]):
        described = summary["variants"][name].get(metric)
        if described is not None:
            values = [cell[metric] for _, cell in sorted(cells[name].items()) if cell.get(metric) is not None]
            metrics[metric] = described | {"values": values}
    return {"name": name, "metrics": metrics}


def _curves(histories: dict[int, list[dict]], metric: str) -> list[list[float]]:
    return [[row[metric] for row in rows if metric in row] for _, rows in sorted(histories.items()) if rows]


def write_figures(summary: dict, cells: dict, histories: dict, detector_histories: dict, confusion: dict | None, out: Path) -> list[Path]:
    """Every PNG that report.md embeds, into `out`."""
    names, rank_by, written = figure_names(summary), summary["rank_by"], []
    bars = [_bar(summary, cells, name) for name in summary["ranking"]]
    plot_final_bars(bars, out / names["ranking"], f"all variants, ranked by {rank_by} (val); {summary['reported']} (test) beside it")
    written.append(out / names["ranking"])
    notes = {n: ", not converged" for n, e in summary["variants"].items() if e["convergence"]["rising"]}
    for axis, figures in names["axes"].items():
        for figure in figures:
            series = {n: c for n in figure["members"] if (c := _curves(histories.get(n, {}), rank_by))}
            plot_mean_curves(series, rank_by, out / figure["curves"], f"{axis}: {rank_by} per epoch", summary["baseline"], notes)
            plot_final_bars([_bar(summary, cells, n) for n in figure["members"]], out / figure["final"], f"{axis}: final {rank_by} (val) and {summary['reported']} (test)")
            written += [out / figure["curves"], out / figure["final"]]
    for figure in names.get("detectors", []):
        rising = {n for n, e in summary["detectors"].items() if e.get("convergence", {}).get("rising")}
        lines = {f"{n}{' (not converged)' if n in rising else ''}": [row[DETECTOR_RANK_BY] for row in detector_histories[n] if DETECTOR_RANK_BY in row] for n in figure["members"]}
        plot_epoch_lines(lines, DETECTOR_RANK_BY, out / figure["file"], "detectors: val mAP per epoch (one seed each)")
        written.append(out / figure["file"])
    if "confusion" in names and confusion is not None:
        plot_confusion(confusion["matrix"], confusion["class_names"], out / names["confusion"], f"{confusion['cell']}: test crops showing a product")
        written.append(out / names["confusion"])
    return written


# --- report.md -------------------------------------------------------------------------------

def ranking_table(summary: dict) -> list[str]:
    """The ranked variants; test top-1 with balanced accuracy beside it (a gap between them means the
    frequent classes carry top-1)."""
    rank_by, reported = summary["rank_by"], summary["reported"]
    header = [
        "rank", "variant", "axis", f"{rank_by} (val)", "Δ val vs baseline [95% CI]", "significant (Holm)", "converged", f"{reported} (test)",
        "test 95% CI", "test_top1", "test_balanced_acc", "MLflow runs",
    ]
    rows = []
    for position, name in enumerate(summary["ranking"], 1):
        entry = summary["variants"][name]
        vs = entry.get("vs_baseline", {}).get(rank_by)
        test = entry.get(reported)
        rows.append([
            rank_cell(position, entry), name, entry["axis"] if name != summary["baseline"] else "(baseline)", mean_std(entry.get(rank_by)),
            "—" if name == summary["baseline"] else delta(vs), "—" if name == summary["baseline"] else significance(vs),
            convergence_text(entry), mean_std(test), interval(test and test["ci_low"], test and test["ci_high"]), mean_std(entry.get("test_top1")),
            mean_std(entry.get("test_balanced_acc")), runs(entry),
        ])
    return table(header, rows)


def axis_table(summary: dict, members: list[str]) -> list[str]:
    rank_by, reported, baseline = summary["rank_by"], summary["reported"], summary["baseline"]
    header = [
        "rank", "variant", "changes", f"{rank_by} mean ± std", "95% CI", "Δ vs baseline [95% CI]", "p (Holm)", "significant",
        "seeds needed", "converged", f"{reported} mean ± std", "Δ test [95% CI]", "p test (Holm)", "MLflow runs",
    ]
    rows = []
    for name in members:
        entry = summary["variants"][name]
        val, test = entry.get(rank_by), entry.get(reported)
        vs = entry.get("vs_baseline", {})
        is_base = name == baseline
        rows.append([
            rank_cell(summary["ranking"].index(name) + 1, entry), f"**{name}**" if is_base else name, changes(entry), mean_std(val),
            interval(val and val["ci_low"], val and val["ci_high"]),
            "—" if is_base else delta(vs.get(rank_by)), "—" if is_base else fmt((vs.get(rank_by) or {}).get("p_holm")),
            "—" if is_base else significance(vs.get(rank_by)), "—" if is_base else fmt((vs.get(rank_by) or {}).get("seeds_needed"), 0),
            convergence_text(entry), mean_std(test), "—" if is_base else delta(vs.get(reported)),
            "—" if is_base else fmt((vs.get(reported) or {}).get("p_holm")), runs(entry),
        ])
    return table(header, rows)


def detector_table(detectors: dict[str, dict]) -> list[str]:
    header = ["detector", *(m.replace("test_bbox_", "test ").replace("val_bbox_", "val ") for m in DETECTOR_COLUMNS), "best epoch", "converged", "MLflow run"]
    rows = [
        [
            name, *(fmt(entry.get(m), 3 if "mAP" in m or "AR" in m else 2) for m in DETECTOR_COLUMNS), str(entry["best_epoch"]),
            convergence_text(entry) if "convergence" in entry else "n/a", f"`{entry['run_id']}`",
        ]
        for name, entry in detectors.items()
    ]
    return table(header, rows)


def shelf_section(summary: dict) -> list[str]:
    detector = summary["test_crops_from"]
    lines = [
        f"## End to end on the shelf (test split, boxes from {detector})",
        "",
        "Each detected box is named by the recognizer (score: detector score × recognizer confidence) and scored "
        "against the ground truth: class-aware COCO mAP@[.5:.95] and mAP@.5, and count accuracy, the share of test "
        "images where every SKU's count is exactly right. The recognizer's accuracy on the detector's crops (products "
        "only) sits beside its accuracy on the ground-truth crops of the same products: the gap is what detection costs "
        "recognition. Head: top-1 for heads with a classifier, nearest prototype otherwise. The boxes are the crops the "
        "crop stage cut (detections above `crop.score_threshold`, at most `crop.max_detections` per image), so this mAP's "
        "precision-recall curve stops at that threshold: it is not comparable with the detector table's mAP, which "
        "scores every detection down to mmdet's 0.05.",
        "",
    ]
    header = ["variant", "shelf mAP", "shelf mAP50", "count accuracy", "head acc. (detected)", "head acc. (GT crops)", "proto acc. (detected)", "proto acc. (GT crops)", "MLflow runs"]
    rows = []
    for name in summary["ranking"]:
        entry = summary["variants"][name]
        shelf = entry.get("shelf", {})
        head = "test_top1" if "val_top1" in entry else "test_proto_acc"  # val_top1: every classifier head has it
        rows.append([
            name, *(mean_std(shelf.get(m)) for m in SHELF_METRICS), mean_std(entry.get(head)), mean_std(entry.get(head.replace("test_", "test_gt_"))),
            mean_std(entry.get("test_proto_acc")), mean_std(entry.get("test_gt_proto_acc")), runs(entry),
        ])
    return [*lines, *table(header, rows), ""]


def confusion_section(summary: dict, figure: str) -> list[str]:
    confusion, variant = summary["confusion"], summary["best_variant"]
    seed = summary["best_seed"]
    run = summary["variants"][variant]["runs"][str(seed)]
    lines = [
        f"## Confusions of the best variant ({confusion['cell']})",
        "",
        f"**{variant}** ranks first by {summary['rank_by']}; of its seeds, seed {seed} has the highest {summary['rank_by']} "
        f"(selection stays on val; MLflow run `{run}`). Rows: true class, columns: the head's answer, on the test crops "
        "that show a product.",
        "",
        f"![confusion matrix]({figure})",
        "",
    ]
    if not confusion["products"]:
        return [*lines, "No test crop of this cell shows a product (the detector matched none).", ""]
    if not confusion["pairs"]:
        return [*lines, "No test crop was confused.", ""]
    rows = [[true, pred, str(count)] for true, pred, count in confusion["pairs"]]
    return [*lines, "Most-confused pairs:", "", *table(["true class", "named as", "crops"], rows, right=1), ""]


def crop_source(summary: dict) -> str:
    """Where the test crops come from, in words."""
    crops = summary["test_crops_from"]
    return "ground-truth boxes" if crops == "none" else f"the boxes of detector {crops}"


def render_report(summary: dict) -> str:
    names = figure_names(summary)
    source = crop_source(summary)
    lines = [
        "# Recognizer ablation report",
        "",
        f"Variants are ranked and the best is picked by **{summary['rank_by']}** on the validation split, a metric every "
        f"head has; **{summary['reported']}**, the same metric on the test split, is reported beside it and never used to "
        f"select. Test crops come from {source}.",
        "",
        *method_note(summary),
        "",
        "## Ranking",
        "",
        *ranking_table(summary),
        "",
        *reading(summary),
        "",
        f"![ranking]({names['ranking']})",
        "",
    ]
    for axis, figures in names["axes"].items():
        lines += [f"## Axis: {axis}", "", _axis_intro(axis, summary["baseline"]), ""]
        lines += [*axis_table(summary, summary["axes"][axis]), ""]
        for figure in figures:
            lines += [f"![{axis} curves]({figure['curves']}) ![{axis} final]({figure['final']})", ""]
    if summary["detectors"]:
        lines += ["## Detectors", "", "COCO bbox on test with the best epoch by val mAP; one run each.", "", *detector_table(summary["detectors"]), ""]
        lines += [f"![detectors]({figure['file']})" for figure in names["detectors"]] + [""]
    if any("shelf" in entry for entry in summary["variants"].values()):
        lines += shelf_section(summary)
    if "confusion" in names:
        lines += confusion_section(summary, names["confusion"])
    return "\n".join(lines).rstrip() + "\n"


def _axis_intro(axis: str, baseline: str) -> str:
    if axis == "mixed":
        return f"Variants that change keys of more than one axis relative to **{baseline}**: their effects can't be told apart."
    if axis == "other":
        return f"Variants that change keys outside the named axes relative to **{baseline}**."
    return f"Variants that change only {axis} keys relative to **{baseline}**, which is shown in every group."


def render_summary(summary: dict) -> str:
    """metrics/summary.md: the short ranked table, the same wording, the detectors."""
    source = crop_source(summary)
    lines = [
        f"# Recognizer ablation (ranked by {summary['rank_by']} on val; {summary['reported']} on test beside it)",
        "",
        f"Test crops come from {source}. Statistics, per-axis figures, shelf metrics and confusions: "
        "[reports/report.md](../reports/report.md).",
        "",
        *method_note(summary),
        "",
        *ranking_table(summary),
        "",
        *reading(summary),
    ]
    if summary["detectors"]:
        lines += ["", "# Detectors (COCO bbox on test with the best epoch by val mAP)", "", *detector_table(summary["detectors"])]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, cells: dict, histories: dict, detector_histories: dict, confusion: dict | None, reports: Path) -> list[Path]:
    """reports/ as a whole, swapped in atomically so no stale figure survives; returns its files.

    `confusion` (summary.confusion_of) carries the matrix, which summary.json leaves out.
    """
    with atomic_path(reports) as tmp:
        tmp.mkdir(parents=True)
        figures = write_figures(summary, cells, histories, detector_histories, confusion, tmp)
        tables = write_curve_tables(histories, detector_histories, tmp)
        write_text_atomic(tmp / REPORT_MD.name, render_report(summary))
    return [reports / REPORT_MD.name, *(reports / path.name for path in figures + tables)]


# --- data for `dvc plots` --------------------------------------------------------------------

def curve_rows(histories: dict, detector_histories: dict) -> tuple[list[dict], list[dict]]:
    """Every cell's per-epoch validation metrics in one long table each, for dvc.yaml's top-level plots
    (its template colours by `variant` and draws one line per `cell`)."""
    recognizer = [
        {"variant": variant, "cell": recognizer_cell(variant, seed), "seed": seed, **{k: v for k, v in row.items() if k == "epoch" or k.startswith("val_")}}
        for variant, by_seed in histories.items() for seed, rows in sorted(by_seed.items()) for row in rows
    ]
    detector = [
        {"variant": name, "cell": name, **{k: v for k, v in row.items() if k == "epoch" or k.startswith("val_")}}
        for name, rows in detector_histories.items() for row in rows
    ]
    return recognizer, detector


def write_curve_tables(histories: dict, detector_histories: dict, out: Path) -> list[Path]:
    recognizer, detector = curve_rows(histories, detector_histories)
    written = []
    for table, rows in ((RECOGNIZER_CURVES, recognizer), (DETECTOR_CURVES, detector)):
        if rows:
            name = table.name  # under `out`: write_report swaps the whole of reports/ in at once
            write_csv_atomic(out / name, [{k: (int(v) if k in ("epoch", "seed") else v) for k, v in row.items()} for row in rows])
            written.append(out / name)
    return written

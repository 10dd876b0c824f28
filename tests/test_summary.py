"""evaluate's numbers: statistics over seeds, ranking on val, comparisons with the baseline, axes."""

import json

import pytest
import yaml

from conftest import REPO, repo_params, write_params
from skulab import axes, stats
from skulab.errors import SkulabError
from skulab.params import load_params
from skulab.summary import (
    CELL_WIDE_KEYS, DETECTOR_COLUMNS, axis_groups, axis_of, differing_keys, load_cells, load_detectors, load_histories, summarize,
)

OVERRIDES = {"fast": {"lr": 0.1}, "metric": {"loss": {"triplet": 1.0}}, "stale": {"lr": 0.5}}


def _cell(root, variant, seed, history=None, overrides=None, **metrics):
    """One recognizer cell's metrics folder: cell.json, final.json and a history.csv."""
    folder = root / f"{variant}-{seed}"
    folder.mkdir(parents=True)
    overrides = OVERRIDES.get(variant, {}) if overrides is None else overrides
    cell = {"variant": variant, "seed": seed, "overrides": overrides, "run_id": f"run-{variant}-{seed}", "dataset_hash": "h", "test_detector": "frcnn"}
    (folder / "cell.json").write_text(json.dumps(cell))
    (folder / "final.json").write_text(json.dumps(metrics))
    history = history or [metrics.get("val_proto_acc", 0.5)] * 3
    rows = "".join(f"{epoch},{value}\n" for epoch, value in enumerate(history, 1))
    (folder / "history.csv").write_text("epoch,val_proto_acc\n" + rows)


def _summary(root, variants, seeds, baseline="base", rank_by="val_proto_acc"):
    cells = load_cells(root, variants, seeds)
    return summarize(cells, load_histories(root, cells), rank_by, baseline, {})


@pytest.fixture
def grid(tmp_path):
    """Ranked on test top-1 (the old way), fast > metric > base; on val prototype accuracy, base > metric > fast."""
    _cell(tmp_path, "base", 0, val_proto_acc=0.90, test_top1=0.80, test_proto_acc=0.85)
    _cell(tmp_path, "base", 1, val_proto_acc=0.92, test_top1=0.60, test_proto_acc=0.87)
    _cell(tmp_path, "fast", 0, val_proto_acc=0.70, test_top1=0.90, test_proto_acc=0.60)
    _cell(tmp_path, "fast", 1, val_proto_acc=0.72, test_top1=0.90, test_proto_acc=0.62)
    # a metric-only head: no top-1 at all, and a prototype accuracy above base's top-1
    _cell(tmp_path, "metric", 0, val_proto_acc=0.85, test_proto_acc=0.80)
    _cell(tmp_path, "metric", 1, val_proto_acc=0.83, test_proto_acc=0.76)
    _cell(tmp_path, "stale", 0, val_proto_acc=1.0, test_top1=1.0, test_proto_acc=1.0)
    return tmp_path


def test_statistics_over_seeds(grid):
    summary = _summary(grid, ["base", "fast", "metric"], [0, 1])
    base = summary["variants"]["base"]
    assert base["test_top1"]["mean"] == pytest.approx(0.7)
    assert base["test_top1"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std over seeds
    assert base["val_proto_acc"] == stats.describe([0.90, 0.92])  # mean, std, n and the t-interval
    assert base["runs"] == {"0": "run-base-0", "1": "run-base-1"}
    assert "test_top1" not in summary["variants"]["metric"]
    assert "stale" not in summary["variants"]  # a variant no longer in params is never read


def test_balanced_accuracy_is_described_beside_top1(tmp_path):
    """Every cell's final.json has balanced accuracy (val, test, test on ground-truth crops): summary.json keeps its statistics."""
    for seed, (val, test, gt) in enumerate([(0.80, 0.60, 0.70), (0.84, 0.64, 0.72)]):
        _cell(tmp_path, "base", seed, val_proto_acc=0.9, test_top1=0.8, val_balanced_acc=val, test_balanced_acc=test, test_gt_balanced_acc=gt)
    base = _summary(tmp_path, ["base"], [0, 1])["variants"]["base"]
    assert base["val_balanced_acc"] == stats.describe([0.80, 0.84])
    assert base["test_balanced_acc"] == stats.describe([0.60, 0.64])
    assert base["test_gt_balanced_acc"] == stats.describe([0.70, 0.72])


def test_ranking_selects_on_val_with_one_metric_for_every_head(grid):
    summary = _summary(grid, ["base", "fast", "metric"], [0, 1])
    # by val_proto_acc, which every head has; test top-1 (fast 0.9) and mixed columns play no part
    assert summary["ranking"] == ["base", "metric", "fast"]
    assert summary["best_variant"] == "base" and summary["best_seed"] == 1  # base-1 has the higher val_proto_acc
    assert summary["reported"] == "test_proto_acc"
    assert [(g["upper"], g["lower"]) for g in summary["ranking_gaps"]] == [("base", "metric"), ("metric", "fast")]


def test_rank_by_a_test_metric_is_refused_in_one_line(tmp_path):
    params = repo_params()
    params["evaluate"]["rank_by"] = "test_top1"
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(SkulabError) as error:
        load_params(path, sections=("evaluate",))
    message = str(error.value)
    assert "\n" not in message
    assert "evaluate.rank_by: must be a validation metric every head has: val_proto_acc, val_precision_at_1, val_map_at_r" in message
    assert "test metrics are reported beside it, never used to select" in message
    params["evaluate"]["rank_by"] = "val_top1"  # not every head has a classifier
    with pytest.raises(SkulabError, match=r"evaluate\.rank_by: must be a validation metric"):
        load_params(write_params(tmp_path / "params.yaml", params), sections=("evaluate",))


def test_the_baseline_must_be_a_variant(grid):
    with pytest.raises(SkulabError, match=r"evaluate\.baseline: 'nope' is not a recognizer variant; allowed: base, fast"):
        _summary(grid, ["base", "fast"], [0, 1], baseline="nope")


def test_one_seed_has_no_std(grid):
    summary = _summary(grid, ["base", "fast"], [0])
    assert summary["variants"]["base"]["val_proto_acc"]["std"] is None
    comparison = summary["variants"]["fast"]["vs_baseline"]["val_proto_acc"]
    assert comparison["p_value"] is None and comparison["seeds_needed"] is None and not comparison["significant"]


def test_a_cell_without_test_products_does_not_crash(tmp_path):
    """train.py writes no test_proto_acc etc. when no test crop shows a product (only e2e scores of 0)."""
    _cell(tmp_path, "base", 0, val_proto_acc=0.9, test_top1=0.8, test_proto_acc=0.85)
    _cell(tmp_path, "base", 1, val_proto_acc=0.9, test_top1=0.8, test_proto_acc=0.85)
    _cell(tmp_path, "fast", 0, val_proto_acc=0.7, test_e2e_recall=0.0, test_e2e_precision=0.0)
    _cell(tmp_path, "fast", 1, val_proto_acc=0.8, test_top1=0.5, test_proto_acc=0.55)
    summary = _summary(tmp_path, ["base", "fast"], [0, 1])
    fast = summary["variants"]["fast"]
    assert fast["test_proto_acc"]["n"] == 1 and fast["test_proto_acc"]["std"] is None
    assert fast["vs_baseline"]["test_proto_acc"]["seeds"] == [1]  # paired only on the seed that has it
    assert fast["test_e2e_recall"]["n"] == 1


def test_a_variant_without_the_ranking_metric_goes_last(tmp_path):
    _cell(tmp_path, "base", 0, val_proto_acc=0.5)
    _cell(tmp_path, "fast", 0, test_e2e_recall=0.0)
    summary = _summary(tmp_path, ["fast", "base"], [0])
    assert summary["ranking"] == ["base", "fast"]
    assert summary["variants"]["fast"]["vs_baseline"]["val_proto_acc"] is None


def test_comparisons_are_paired_and_holm_adjusted(tmp_path):
    seeds = list(range(8))
    offsets = [0.01, -0.02, 0.015, 0.0, -0.01, 0.02, -0.005, 0.005]
    for seed, offset in zip(seeds, offsets):
        base = 0.70 + offset
        _cell(tmp_path, "base", seed, val_proto_acc=base)
        _cell(tmp_path, "better", seed, overrides={"lr": 0.1}, val_proto_acc=base + 0.05 + offset / 10)
        _cell(tmp_path, "same", seed, overrides={"lr": 0.3}, val_proto_acc=base + offsets[-1 - seed] / 4)
    summary = _summary(tmp_path, ["base", "better", "same"], seeds)
    better = summary["variants"]["better"]["vs_baseline"]["val_proto_acc"]
    same = summary["variants"]["same"]["vs_baseline"]["val_proto_acc"]
    assert better["test"] == stats.T_TEST and better["n"] == 8
    assert better["diff_mean"] == pytest.approx(0.05, abs=1e-3)
    holm = stats.holm({"better": better["p_value"], "same": same["p_value"]})
    assert (better["p_holm"], same["p_holm"]) == (holm["better"], holm["same"])
    assert better["significant"] and not same["significant"]
    assert better["seeds_needed"] == stats.seeds_needed(better["diff_mean"], better["diff_std"], alpha=stats.ALPHA / 2)


def test_convergence_flags_a_rising_curve(tmp_path):
    _cell(tmp_path, "base", 0, history=[0.5, 0.7, 0.8, 0.8, 0.8, 0.8], val_proto_acc=0.8)
    _cell(tmp_path, "fast", 0, history=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7], val_proto_acc=0.7)
    summary = _summary(tmp_path, ["base", "fast"], [0])
    assert not summary["variants"]["base"]["convergence"]["rising"]
    assert summary["variants"]["fast"]["convergence"]["rising"]
    assert summary["variants"]["fast"]["convergence"]["slope"] == pytest.approx(0.1)


def test_axes_group_variants_by_what_they_change_from_the_baseline():
    assert axis_of(["lr", "optimizer"]) == "optimizer"
    assert axis_of(["loss"]) == "loss" and axis_of(["augment"]) == "augmentation" and axis_of(["backbone"]) == "backbone"
    assert axis_of(["schedule", "milestones"]) == "schedule"
    assert axis_of(["augment", "backbone"]) == "mixed"
    assert axis_of(["embedding_dim"]) == "head"
    assert axis_of(["image_size"]) == "other"
    # relative to the baseline variant, not to base: a baseline with lr 0.001 makes {} an lr change
    assert differing_keys({}, {"lr": 0.001}) == ["lr"]
    assert differing_keys({"lr": 0.001, "augment": "none"}, {"lr": 0.001}) == ["augment"]
    variants = {"b": {"axis": "other"}, "x": {"axis": "loss"}, "y": {"axis": "mixed"}, "z": {"axis": "loss"}}
    assert axis_groups(variants, "b") == {"loss": ["b", "x", "z"], "mixed": ["b", "y"]}


def test_the_report_files_every_key_a_method_reads_under_its_axis():
    for axis in (a for a in axes.AXES.values() if a.section == "recognizer"):
        assert axis_of([axis.key]) == axis.label
        for entry in axis.entries.values():
            for key in entry.reads - CELL_WIDE_KEYS:
                assert axis_of([key]) == axis.label, (axis.name, entry.name, key)


def test_a_newly_registered_methods_keys_join_its_axis(monkeypatch):
    assert axis_of(["mlp_hidden"]) == "other"
    monkeypatch.setitem(axes.HEADS, "mlp", axes.Entry("mlp", frozenset({"mlp_hidden"}), "two linear layers"))
    assert axis_of(["mlp_hidden"]) == "head" and axis_of(["mlp_hidden", "embedding_dim"]) == "head"


def test_detectors_are_listed_best_first(tmp_path):
    for name, val in (("frcnn", 0.5), ("cascade", 0.7)):
        (tmp_path / "det" / name).mkdir(parents=True)
        final = {key: val for key in DETECTOR_COLUMNS} | {"best_epoch": 3, "run_id": f"run-{name}", "test_bbox_mAP_s": 0.1}
        (tmp_path / "det" / name / "final.json").write_text(json.dumps(final))
    _cell(tmp_path / "rec", "base", 0, val_proto_acc=0.7)
    detectors = load_detectors(tmp_path / "det", ["frcnn", "cascade"])
    cells = load_cells(tmp_path / "rec", ["base"], [0])
    summary = summarize(cells, load_histories(tmp_path / "rec", cells), "val_proto_acc", "base", detectors)
    assert list(summary["detectors"]) == ["cascade", "frcnn"] and "test_bbox_mAP_s" not in summary["detectors"]["frcnn"]
    with pytest.raises(SkulabError, match=r"ssd/final\.json: missing; run train_detector@ssd"):
        load_detectors(tmp_path / "det", ["ssd"])


def test_missing_cell_names_the_stage(tmp_path):
    with pytest.raises(SkulabError, match=r"base-0/(cell|final)\.json: missing; run train_recognizer@base-0"):
        load_cells(tmp_path, ["base"], [0])


def test_evaluate_reruns_when_a_variant_is_removed_and_reads_its_inputs():
    """dvc.yaml: evaluate depends on the variant list, the statistics and shelf code and the shelf data."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert {"recognizer.variants", "recognizer.seeds", "evaluate"} <= set(stage["params"])
    deps = set(stage["deps"])
    assert {"src/skulab/stats.py", "src/skulab/shelf.py", "src/skulab/report.py", "data/crops/manifest.csv", "data/prepared/annotations/test.json"} <= deps
    assert any(list(out) == ["reports"] for out in stage["outs"] if isinstance(out, dict))

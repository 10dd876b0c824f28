"""evaluate: mean and std over seeds, ranking, and the markdown table."""

import json

import pytest

from skulab.errors import SkulabError
from skulab.summary import DETECTOR_METRICS, load_cells, load_detectors, markdown_table, summarize


def _cell(folder, variant, seed, **metrics):
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps({"variant": variant, "seed": seed, "overrides": {"lr": 0.1} if variant == "fast" else {}, "run_id": f"run-{variant}-{seed}", "dataset_hash": "h", "test_detector": "frcnn"}))
    (folder / "final.json").write_text(json.dumps(metrics))


def test_summary_statistics_and_ranking(tmp_path):
    _cell(tmp_path / "base-0", "base", 0, test_top1=0.8, test_proto_acc=0.7, test_precision_at_1=0.9, test_map_at_r=0.5)
    _cell(tmp_path / "base-1", "base", 1, test_top1=0.6, test_proto_acc=0.7, test_precision_at_1=0.9, test_map_at_r=0.5)
    _cell(tmp_path / "fast-0", "fast", 0, test_top1=0.9, test_proto_acc=0.8, test_precision_at_1=0.9, test_map_at_r=0.5)
    _cell(tmp_path / "fast-1", "fast", 1, test_top1=0.9, test_proto_acc=0.8, test_precision_at_1=0.9, test_map_at_r=0.5)
    _cell(tmp_path / "metric-0", "metric", 0, test_proto_acc=0.85, test_precision_at_1=0.9, test_map_at_r=0.6)
    _cell(tmp_path / "metric-1", "metric", 1, test_proto_acc=0.75, test_precision_at_1=0.9, test_map_at_r=0.6)
    _cell(tmp_path / "stale-0", "stale", 0, test_top1=1.0, test_proto_acc=1.0, test_precision_at_1=1.0, test_map_at_r=1.0)
    cells = load_cells(tmp_path, ["base", "fast", "metric"], [0, 1])
    summary = summarize(cells, "test_top1", {})
    base = summary["variants"]["base"]
    assert base["test_top1"]["mean"] == pytest.approx(0.7)
    assert base["test_top1"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std over seeds
    assert base["runs"] == {"0": "run-base-0", "1": "run-base-1"}
    assert "test_top1" not in summary["variants"]["metric"]
    # metric-only heads rank by prototype accuracy (0.8), between fast (0.9) and base (0.7)
    assert summary["ranking"] == ["fast", "metric", "base"]
    assert "stale" not in summary["variants"]  # a removed variant's old outputs are ignored
    table = markdown_table(summary)
    assert "| 1 | fast | lr=0.1 | 0.900 ± 0.000 |" in table
    assert "| 2 | metric | (base) | n/a | 0.800 ± 0.071 |" in table
    assert "Test crops come from the boxes of detector frcnn" in table
    assert "# Detectors" not in table


def test_detectors_are_listed_best_first(tmp_path):
    for name, val in (("frcnn", 0.5), ("cascade", 0.7)):
        (tmp_path / "det" / name).mkdir(parents=True)
        final = {key: val for key in DETECTOR_METRICS} | {"best_epoch": 3, "run_id": f"run-{name}", "test_bbox_mAP_s": 0.1}
        (tmp_path / "det" / name / "final.json").write_text(json.dumps(final))
    _cell(tmp_path / "rec" / "base-0", "base", 0, test_top1=0.8, test_proto_acc=0.7, test_precision_at_1=0.9, test_map_at_r=0.5)
    detectors = load_detectors(tmp_path / "det", ["frcnn", "cascade"])
    summary = summarize(load_cells(tmp_path / "rec", ["base"], [0]), "test_top1", detectors)
    assert list(summary["detectors"]) == ["cascade", "frcnn"] and "test_bbox_mAP_s" not in summary["detectors"]["frcnn"]
    table = markdown_table(summary)
    assert "| cascade | 0.700 | 0.700 |" in table and table.index("| cascade |") < table.index("| frcnn |")
    with pytest.raises(SkulabError, match=r"ssd/final\.json: missing; run train_detector@ssd"):
        load_detectors(tmp_path / "det", ["ssd"])


def test_missing_cell_names_the_stage(tmp_path):
    with pytest.raises(SkulabError, match=r"final.json: missing; run train_recognizer@base-0"):
        load_cells(tmp_path, ["base"], [0])

"""The evaluate stage's report, built from metrics files without training anything.

The realistic fixture is the committed default run (metrics/recognizer, metrics/detector: 11 variants
x 2 seeds, 4 detectors) plus a tiny shelf: test annotations, a crop manifest and each cell's
test_predictions.csv, which the committed run predates.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, repo_params, write_params
from skulab.layout import DETECTOR_CURVES, RECOGNIZER_CURVES
from skulab.report import figure_names, render_report, render_summary, write_report
from skulab.summary import load_cells, load_histories, summarize

BIN = Path(sys.executable).parent
CLASSES = {0: "cola", 1: "cola_zero", 2: "fanta", 3: "fanta_lemon"}  # two look-alike pairs
PNG = b"\x89PNG\r\n\x1a\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _shelf(root: Path, detector: str) -> list[dict]:
    """3 test images with one product of each class, every one detected, plus one background detection."""
    images = [{"id": i + 1, "file_name": f"test/{i:04d}.png", "width": 320, "height": 256} for i in range(3)]
    annotations, rows = [], []
    for image in images:
        for class_id, name in CLASSES.items():
            box = [10 + 70 * class_id, 20, 50, 80]
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": class_id, "bbox": box, "area": 4000, "iscrowd": 0})
            rows.append({
                "crop": f"test/{image['id']:07d}_{class_id:03d}.png", "split": "test", "source_image": image["file_name"],
                "x": box[0] + 1, "y": box[1], "w": box[2], "h": box[3], "class_id": class_id, "class_name": name,
                "origin": "detection", "detector": detector, "score": 0.9, "iou": 0.95,
            })
    rows.append({**rows[0], "crop": "test/0000001_004.png", "x": 290, "w": 25, "class_id": -1, "class_name": "background", "score": 0.4, "iou": 0.0})
    (root / "data/prepared/annotations").mkdir(parents=True)
    categories = [{"id": c, "name": n} for c, n in CLASSES.items()]
    (root / "data/prepared/annotations/test.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (root / "data/crops").mkdir(parents=True)
    (root / "data/crops/classes.json").write_text(json.dumps({str(c): n for c, n in CLASSES.items()}))
    _write_csv(root / "data/crops/manifest.csv", rows)
    return rows


def _predictions(cell: Path, rows: list[dict], confuse_every: int, offset: int) -> None:
    """Right answers except every n-th product crop, named as its look-alike (cola <-> cola_zero)."""
    predictions = []
    for index, row in enumerate(rows):
        label = int(row["class_id"])
        pred = 0 if label < 0 else (label ^ 1 if (index + offset) % confuse_every == 0 else label)
        predictions.append({"crop": row["crop"], "label": label, "pred": pred, "confidence": 0.8, "proto_pred": pred, "proto_similarity": 0.6})
    _write_csv(cell / "test_predictions.csv", predictions)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A repo-shaped folder holding the committed metrics and a tiny shelf around them."""
    root = tmp_path_factory.mktemp("evaluate")
    for kind in ("recognizer", "detector"):
        for cell in sorted(p for p in (REPO / "metrics" / kind).iterdir() if p.is_dir()):
            (root / "metrics" / kind / cell.name).mkdir(parents=True)
            for name in ("final.json", "cell.json", "history.csv"):
                if (cell / name).is_file():
                    shutil.copy(cell / name, root / "metrics" / kind / cell.name / name)
    rows = _shelf(root, "cascade_rcnn")
    for offset, cell in enumerate(sorted((root / "metrics/recognizer").iterdir())):
        _predictions(cell, rows, confuse_every=4, offset=offset)
    return root


def _cells(root: Path) -> dict[str, list[int]]:
    seeds: dict[str, list[int]] = {}
    for cell in (root / "metrics/recognizer").iterdir():
        info = json.loads((cell / "cell.json").read_text())
        seeds.setdefault(info["variant"], []).append(info["seed"])
    return seeds


@pytest.fixture(scope="module")
def staged(committed) -> Path:
    """The evaluate stage itself run on the fixture, with its own MLflow store."""
    params = repo_params()
    variants = _cells(committed)
    params["recognizer"]["variants"] = {v: params["recognizer"]["variants"].get(v, {}) for v in sorted(variants)}
    params["recognizer"]["seeds"] = sorted({s for seeds in variants.values() for s in seeds})
    params["detector"]["variants"] = {d.name: params["detector"]["variants"][d.name] for d in sorted((committed / "metrics/detector").iterdir()) if d.is_dir()}
    write_params(committed / "params.yaml", params)
    shutil.copy(REPO / "dvc.yaml", committed / "dvc.yaml")  # marks the repo root for the MLflow store
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO / "src")
    result = subprocess.run([sys.executable, str(REPO / "stages/evaluate.py")], cwd=committed, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best variant by val_proto_acc (val): " in result.stdout
    return committed


def _report(root: Path) -> str:
    return (root / "reports/report.md").read_text()


def test_report_has_a_table_and_two_figures_per_axis(staged):
    report = _report(staged)
    for axis in ("optimizer", "loss", "schedule", "augmentation", "backbone"):
        section = report.split(f"## Axis: {axis}\n")[1].split("\n## ")[0]
        header = next(line for line in section.splitlines() if line.startswith("| rank |"))
        for column in ("val_proto_acc mean ± std", "95% CI", "Δ vs baseline [95% CI]", "p (Holm)", "significant", "seeds needed", "converged", "MLflow runs"):
            assert column in header, (axis, column)
        assert "| **baseline** |" in section  # the baseline is in every group
        assert f"(axis_{axis}_curves.png)" in section and f"(axis_{axis}_final.png)" in section
    assert "## Axis: mixed" not in report and "## Axis: other" not in report


def test_figures_are_non_empty_pngs_and_all_embedded(staged):
    report = _report(staged)
    embedded = set(re.findall(r"\]\(([^)]+\.png)\)", report))
    written = {path.name for path in (staged / "reports").glob("*.png")}
    assert embedded == written
    assert {"ranking.png", "detectors_val_map.png", "confusion.png"} <= written
    for name in written:
        data = (staged / "reports" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


def test_every_row_names_its_mlflow_runs(staged):
    report = _report(staged)
    ranking = report.split("## Ranking\n")[1].split("\n- ")[0]
    for variant in _cells(staged):
        row = next(line for line in ranking.splitlines() if f"| {variant} |" in line)
        for cell in (staged / "metrics/recognizer").glob(f"{variant}-*"):
            assert json.loads((cell / "cell.json").read_text())["run_id"] in row
    for detector in (staged / "metrics/detector").iterdir():
        assert json.loads((detector / "final.json").read_text())["run_id"] in report


def test_ranking_and_best_are_chosen_on_val(staged):
    summary = json.loads((staged / "metrics/summary.json").read_text())
    means = {}
    for cell in (staged / "metrics/recognizer").iterdir():
        variant = json.loads((cell / "cell.json").read_text())["variant"]
        means.setdefault(variant, []).append(json.loads((cell / "final.json").read_text())["val_proto_acc"])
    expected = sorted(means, key=lambda v: -sum(means[v]) / len(means[v]))
    assert summary["rank_by"] == "val_proto_acc" and summary["ranking"] == expected
    assert summary["best_variant"] == expected[0]
    best = summary["variants"][expected[0]]
    assert "test_proto_acc" in best and "vs_baseline" not in summary["variants"]["baseline"]
    assert render_summary(summary) == (staged / "metrics/summary.md").read_text()


def test_ranking_tables_show_balanced_accuracy_next_to_top1(staged):
    """Both ranking tables (report.md, summary.md) carry test balanced accuracy right after test top-1."""
    summary = json.loads((staged / "metrics/summary.json").read_text())
    for text in (_report(staged).split("## Ranking\n")[1], (staged / "metrics/summary.md").read_text()):
        lines = text.splitlines()
        header = next(line for line in lines if line.startswith("| rank |")).split(" | ")
        assert header[header.index("test_top1") + 1] == "test_balanced_acc"
        for variant, entry in summary["variants"].items():
            row = next(line for line in lines if f"| {variant} |" in line).split(" | ")
            balanced = entry["test_balanced_acc"]
            assert row[header.index("test_balanced_acc")] == f"{balanced['mean']:.3f} ± {balanced['std']:.3f}"


def test_two_seeds_resolve_nothing_and_the_text_says_so(staged):
    summary = json.loads((staged / "metrics/summary.json").read_text())
    report = _report(staged)
    steps = [line for line in report.splitlines() if " ranks above " in line]
    assert len(steps) == len(summary["ranking"]) - 1
    for line in steps:
        assert "**not significant**" in line and re.search(r"about \d+ seeds would resolve it|more than \d+ seeds would be needed", line), line
    rising = [name for name in summary["ranking"] if summary["variants"][name]["convergence"]["rising"]]
    assert rising, "the committed run has unconverged variants (warmup_cosine, autoaugment)"
    for name in rising:
        rank = summary["ranking"].index(name) + 1
        assert f"**{name}** (#{rank}, not converged)" in report
        assert f"| {rank} (not converged) | {name} |" in report


def test_shelf_metrics_and_confusions(staged):
    report = _report(staged)
    shelf = report.split("## End to end on the shelf (test split, boxes from cascade_rcnn)")[1].split("\n## ")[0]
    for variant in _cells(staged):
        assert f"| {variant} |" in shelf
    summary = json.loads((staged / "metrics/summary.json").read_text())
    assert 0 <= summary["variants"]["baseline"]["shelf"]["mAP"]["mean"] <= 1
    assert summary["confusion"]["cell"] == f"{summary['best_variant']}-{summary['best_seed']}"
    pairs = report.split("Most-confused pairs:")[1]
    assert re.search(r"\| (cola \| cola_zero|cola_zero \| cola|fanta \| fanta_lemon|fanta_lemon \| fanta) \| \d+ \|", pairs)


def test_mlflow_run_holds_the_report_and_headline_numbers(staged):
    mlflow.set_tracking_uri(f"sqlite:///{staged / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["skulab"])
    run = runs[runs["tags.dvc.stage"] == "evaluate"].iloc[0]
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run["run_id"], "report")}
    assert {"report/report.md", "report/ranking.png", "report/confusion.png"} <= artifacts
    assert run["metrics.best.val_proto_acc"] > 0 and "metrics.baseline.shelf_mAP" in runs
    assert run["tags.best_variant"] == json.loads((staged / "metrics/summary.json").read_text())["best_variant"]


def test_dvc_plots_overlay_every_cell(staged, tmp_path):
    """dvc.yaml's top-level plots, rendered by DVC itself on the stage's curve tables."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    shutil.copytree(REPO / "configs/plots", tmp_path / "configs/plots")
    shutil.copytree(staged / "reports", tmp_path / "reports")
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run([BIN / "dvc", "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True, check=True)
    data = json.loads(shown.stdout)["data"]
    for table, expected in ((RECOGNIZER_CURVES, {c.name for c in (staged / "metrics/recognizer").iterdir()}), (DETECTOR_CURVES, {d.name for d in (staged / "metrics/detector").iterdir()})):
        (plot,) = data[table.as_posix()]
        assert {row["cell"] for row in plot["content"]["data"]["values"]} == expected  # every cell in one chart


# --- hand-made grids -------------------------------------------------------------------------

def _cell(root: Path, variant: str, seed: int, overrides: dict, history: list[float], **final) -> None:
    folder = root / f"{variant}-{seed}"
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps({"variant": variant, "seed": seed, "overrides": overrides, "run_id": f"run-{variant}-{seed}", "dataset_hash": "h", "test_detector": "none"}))
    (folder / "final.json").write_text(json.dumps(final))
    (folder / "history.csv").write_text("epoch,val_proto_acc\n" + "".join(f"{e},{v}\n" for e, v in enumerate(history, 1)))


def _built(root: Path, variants: list[str], seeds: list[int]) -> tuple[dict, dict, dict]:
    cells = load_cells(root, variants, seeds)
    histories = load_histories(root, cells)
    return summarize(cells, histories, "val_proto_acc", "base", {}), cells, histories


def test_a_resolved_difference_is_called_significant(tmp_path):
    for seed in range(6):
        noise = (seed % 3 - 1) / 200
        _cell(tmp_path, "base", seed, {}, [0.6, 0.7, 0.7], val_proto_acc=0.70 + noise, test_proto_acc=0.7)
        _cell(tmp_path, "wide", seed, {"backbone": "resnet18"}, [0.8, 0.9, 0.9], val_proto_acc=0.90 + noise + seed / 1000, test_proto_acc=0.9)
    summary, _, _ = _built(tmp_path, ["base", "wide"], list(range(6)))
    report = render_report(summary)
    assert "**wide** (#1) ranks above **base** (#2) by +0.203" in report
    assert ": significant (paired t-test, n = 6, Holm-adjusted p = 0.000)." in report
    assert "not converged" not in report


def test_one_seed_shows_no_std_and_says_why_nothing_is_tested(tmp_path):
    _cell(tmp_path, "base", 0, {}, [0.5, 0.6, 0.6], val_proto_acc=0.6, test_proto_acc=0.55)
    _cell(tmp_path, "lr", 0, {"lr": 0.1}, [0.5, 0.7, 0.7], val_proto_acc=0.7, test_proto_acc=0.65)
    summary, _, _ = _built(tmp_path, ["base", "lr"], [0])
    for text in (render_report(summary), render_summary(summary)):
        assert "0.700 ± n/a (n=1)" in text and "± 0.000" not in text
        assert "but untested, so **not shown to differ**; one seed can't estimate the spread; run at least 2 seeds." in text


def test_a_cell_without_test_products_renders(tmp_path):
    for seed in (0, 1):
        _cell(tmp_path, "base", seed, {}, [0.5, 0.6, 0.6], val_proto_acc=0.6 + seed / 100, test_proto_acc=0.5, test_top1=0.5)
    _cell(tmp_path, "aug", 0, {"augment": "none"}, [0.5, 0.6, 0.6], val_proto_acc=0.61, test_e2e_recall=0.0, test_e2e_precision=0.0)
    _cell(tmp_path, "aug", 1, {"augment": "none"}, [0.5, 0.6, 0.6], val_proto_acc=0.62, test_e2e_recall=0.0, test_e2e_precision=0.0)
    summary, cells, histories = _built(tmp_path, ["base", "aug"], [0, 1])
    files = write_report(summary, cells, histories, {}, None, tmp_path / "reports")
    report = (tmp_path / "reports/report.md").read_text()
    row = next(line for line in report.split("## Axis: augmentation")[1].splitlines() if "| aug |" in line)
    assert row.count("n/a") >= 3  # test mean, its Δ and p: no product among the test crops
    assert all(path.is_file() for path in files)


def test_detector_and_shelf_sections_are_left_out_without_detectors(tmp_path):
    for seed in (0, 1):
        _cell(tmp_path, "base", seed, {}, [0.5, 0.6], val_proto_acc=0.6, test_proto_acc=0.5)
        _cell(tmp_path, "sgd", seed, {"optimizer": "sgd"}, [0.4, 0.5], val_proto_acc=0.5, test_proto_acc=0.4)
    summary, cells, histories = _built(tmp_path, ["base", "sgd"], [0, 1])
    write_report(summary, cells, histories, {}, None, tmp_path / "reports")
    report = (tmp_path / "reports/report.md").read_text()
    assert "Test crops come from ground-truth boxes." in report
    assert "## Detectors" not in report and "## End to end" not in report and "## Confusions" not in report
    assert not list((tmp_path / "reports").glob("detector*"))


def test_a_crowded_axis_is_split_into_figures_of_at_most_six_lines(tmp_path):
    losses = [f"loss{i}" for i in range(8)]
    _cell(tmp_path, "base", 0, {}, [0.5, 0.6], val_proto_acc=0.6)
    for i, name in enumerate(losses):
        _cell(tmp_path, name, 0, {"loss": {"triplet": float(i + 1)}}, [0.5, 0.6], val_proto_acc=0.5)
    summary, cells, histories = _built(tmp_path, ["base", *losses], [0])
    figures = figure_names(summary)["axes"]["loss"]
    assert [len(f["members"]) for f in figures] == [6, 4] and all(f["members"][0] == "base" for f in figures)
    write_report(summary, cells, histories, {}, None, tmp_path / "reports")
    assert (tmp_path / "reports/axis_loss_curves_2.png").read_bytes().startswith(PNG)

"""layout.py against dvc.yaml: the paths each stage writes and reads, spelled once in each, must agree.

dvc.yaml declares every stage's deps, outs, metrics and plots; layout.py builds the same paths for the
code. A renamed folder on one side only would make DVC track files that no stage writes (or miss the
ones it does), so every disagreement fails here with both sides named.
"""

from pathlib import Path, PurePath, PurePosixPath

import pytest
import yaml

from conftest import REPO
from skulab import layout

DETECTOR, VARIANT, SEED = "some_detector", "some_variant", 7  # stand-ins for dvc.yaml's foreach/matrix keys
TEMPLATES = {"${key}": DETECTOR, "${item.variant}": VARIANT, "${item.seed}": str(SEED)}
ROOTS = ("data", "models", "metrics", "reports")  # what stages produce (the rest: code, configs, the lock file)
ROOT_CONSTANTS = ("METRICS",)  # a folder that several stages write into, never an output of its own


def writes(lay=layout) -> dict[str, dict[str, PurePosixPath]]:
    """Stage -> what it writes, as layout builds it: 'layout.NAME[ / part]' -> the path."""
    cell = lay.recognizer_cell(VARIANT, SEED)
    built = {
        "prepare": {"PREPARED": (), "card_file(PREPARED)": None, "import_report_file(PREPARED)": None, **{f"annotations_file(PREPARED, {s!r})": s for s in lay.SPLITS}},
        "train_detector": {"DETECTOR_MODELS": (DETECTOR,), "DETECTIONS": (DETECTOR,), "DETECTOR_METRICS": (DETECTOR,)},
        "crop": {"CROPS": (), "THRESHOLD_FIGURE": (), **{f"crop_store(CROPS, {s!r})": s for s in (*lay.SPLITS, lay.GT_TEST)}},
        "train_recognizer": {"RECOGNIZER_MODELS": (cell,), "RECOGNIZER_METRICS": (cell,)},
        "evaluate": {name: () for name in ("REPORTS", "REPORT_MD", "RECOGNIZER_CURVES", "DETECTOR_CURVES", "SUMMARY_JSON", "SUMMARY_MD")},
        "package": {"PACKAGE": ()},
    }
    out: dict[str, dict[str, PurePosixPath]] = {}
    for stage, items in built.items():
        for name, arg in items.items():
            if name.startswith("card_file("):
                path = lay.card_file(lay.PREPARED)
            elif name.startswith("import_report_file("):
                path = lay.import_report_file(lay.PREPARED)
            elif name.startswith("annotations_file("):
                path = lay.annotations_file(lay.PREPARED, arg)
            elif name.startswith("crop_store("):
                path = lay.crop_store(lay.CROPS, arg)
            else:
                path = getattr(lay, name).joinpath(*arg)
                name = " / ".join([name, *(repr(a) for a in arg)])
            out.setdefault(stage, {})[f"layout.{name}"] = PurePosixPath(path.as_posix())
    return out


def _paths(entries) -> list[str]:
    """dvc.yaml entries (a path, or {path: options}) with the foreach/matrix keys filled in; a path
    that still holds ${...} comes from params (e.g. the external dataset) and is left out."""
    paths = []
    for entry in entries or []:
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        for template, value in TEMPLATES.items():
            path = path.replace(template, value)
        if "${" not in path:
            paths.append(path)
    return paths


def _under(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return path == folder or folder in path.parents


def _ours(path: PurePosixPath) -> bool:
    return path.parts[0] in ROOTS


def disagreements(dvc: dict, lay=layout) -> list[str]:
    """Every way layout.py and dvc.yaml disagree, one sentence each naming both sides."""
    problems = []
    stages = {name: stage.get("do", stage) for name, stage in dvc["stages"].items()}  # foreach stages nest under `do`
    written = writes(lay)
    if set(stages) != set(written):
        problems.append(f"dvc.yaml stages {sorted(stages)} != the stages tests/test_layout.py maps to layout constants {sorted(written)}")
    # Every Path constant belongs to some stage (a new one must be added to writes() above).
    mapped = {name.removeprefix("layout.").split(" ")[0] for by_name in written.values() for name in by_name}
    for name, value in vars(lay).items():
        if isinstance(value, PurePath) and name.isupper() and name not in mapped and name not in ROOT_CONSTANTS:
            problems.append(f"layout.{name} = {value} is written by no stage in tests/test_layout.py's map; add it to writes()")
    for stage, by_name in written.items():
        spec = stages.get(stage, {})
        produced = [PurePosixPath(p) for key in ("outs", "metrics", "plots") for p in _paths(spec.get(key))]
        # layout -> dvc.yaml: what the code writes is tracked as an output of the same stage.
        for name, path in by_name.items():
            if not any(_under(path, out) or _under(out, path) for out in produced):
                problems.append(
                    f"{name} = {path} is written by stage {stage}, but no dvc.yaml {stage} outs/metrics/plots path "
                    f"holds it or lies in it: {[str(p) for p in produced]}"
                )
        # dvc.yaml -> layout: every output the stage declares comes from one of its layout paths.
        for out in produced:
            if _ours(out) and not any(_under(out, path) for path in by_name.values()):
                problems.append(
                    f"dvc.yaml {stage} output {out} lies in none of the layout paths that stage writes: "
                    + ", ".join(f"{name} = {path}" for name, path in by_name.items())
                )
    # Every dep a stage reads is produced by some stage through layout.
    every = {name: path for by_name in written.values() for name, path in by_name.items()}
    for stage, spec in stages.items():
        for dep in map(PurePosixPath, _paths(spec.get("deps"))):
            if _ours(dep) and not any(_under(dep, path) or _under(path, dep) for path in every.values()):
                near = ", ".join(f"{n} = {p}" for n, p in every.items() if p.parts[0] == dep.parts[0])
                problems.append(f"dvc.yaml {stage} dep {dep} is built from no layout path (layout's under {dep.parts[0]}/: {near})")
    # The top-level plots are the evaluate stage's curve tables.
    tables = {name: path for name, path in written["evaluate"].items() if name.endswith("_CURVES")}
    for plot in dvc.get("plots", []):
        path = PurePosixPath(next(iter(plot)) if isinstance(plot, dict) else plot)
        if _ours(path) and path not in tables.values():
            problems.append(f"dvc.yaml top-level plot {path} is none of layout's curve tables: {', '.join(f'{n} = {p}' for n, p in tables.items())}")
    return problems


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_layout_and_dvc_yaml_agree(dvc):
    problems = disagreements(dvc)
    assert not problems, "layout.py and dvc.yaml disagree:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DETECTOR_METRICS", layout.METRICS / "detectors", "layout.DETECTOR_METRICS / 'some_detector' = metrics/detectors/some_detector"),
        ("SUMMARY_JSON", layout.METRICS / "summary.jsn", "dvc.yaml evaluate output metrics/summary.json"),
        ("RECOGNIZER_CURVES", layout.REPORTS / "recognizer_curves.csv", "dvc.yaml top-level plot reports/recognizer_val_curves.csv"),
        ("PREPARED", layout.PREPARED.with_name("prep"), "dvc.yaml crop dep data/prepared"),
        ("recognizer_cell", lambda variant, seed: f"{variant}_{seed}", "layout.RECOGNIZER_METRICS / 'some_variant_7'"),
    ],
)
def test_a_wrong_constant_fails_naming_both_sides(dvc, monkeypatch, name, value, expected):
    monkeypatch.setattr(layout, name, value)
    problems = disagreements(dvc)
    assert any(expected in problem for problem in problems), problems


def test_an_unmapped_constant_fails(dvc, monkeypatch):
    monkeypatch.setattr(layout, "STRAY", layout.METRICS / "stray", raising=False)
    assert any(problem.startswith("layout.STRAY = metrics/stray is written by no stage") for problem in disagreements(dvc))


def test_dvc_ignores_python_bytecode_in_its_source_dependencies():
    """A __pycache__ beside a stage's source deps (src/skulab/<package>) is not in a fresh clone or DVC's
    experiment copies: hashed, it made every detector cell look changed there and train again."""
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    paths = ["src/skulab/detection/__pycache__/train.cpython-311.pyc", "src/skulab/recognition/__pycache__/head.cpython-311.pyc"]
    result = subprocess.run([str(dvc), "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == paths, result.stdout + result.stderr
    kept = subprocess.run([str(dvc), "check-ignore", "src/skulab/detection/train.py"], cwd=REPO, capture_output=True, text=True)
    assert kept.returncode == 1  # the sources themselves are hashed

"""Benchmark: the default detector grid on this machine, and our stage against mmdet's own tools/train.py.

For each detector in params.yaml it runs `dvc repro --force -s train_detector@<name>` in this repo
(so the results land in dvc.lock and MLflow as a normal run would) and records the wall time, the
val and test mAP and the seconds per training iteration. Then it trains the same resolved config
(models/detector/<name>/config.py) with mmdet's tools/train.py for the first `--compare-epochs`
epochs, and compares seconds per iteration as mmengine logs them in both runs (same logger, same
windows, median over the same epochs). Writes metrics/bench/detector_time.{json,md}.

Run by hand: `.venv/bin/python bench/detector_time.py` (about 15 minutes on 2 cores).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ITER_TIME = re.compile(r"Epoch\(train\)\s+\[(\d+)\]\[\s*\d+/\d+\].*?\btime: ([0-9.]+)")


def iteration_times(log: Path, epochs: int) -> list[float]:
    """mmengine's logged per-iteration `time` (a window mean) of each train log line in the first
    `epochs`, but the first window (start-up: first batches, lazy initialisation)."""
    return [float(t) for epoch, t in ITER_TIME.findall(log.read_text()) if int(epoch) <= epochs][1:]


def newest_log(work_dir: Path) -> Path:
    logs = sorted(work_dir.glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise SystemExit(f"no mmengine log under {work_dir}")
    return logs[-1]


def mmdet_train_script() -> Path:
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compare-epochs", type=int, default=3, help="epochs trained with tools/train.py per detector")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/detector_time"), help="output path stem")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    names = list(yaml.safe_load((REPO / "params.yaml").read_text())["detector"]["variants"])
    rows, grid_started = {}, time.perf_counter()
    for name in names:
        started = time.perf_counter()
        subprocess.run([BIN / "dvc", "repro", "--force", "-s", f"train_detector@{name}"], cwd=REPO, env=env, check=True)
        wall = time.perf_counter() - started
        final = json.loads((REPO / "metrics/detector" / name / "final.json").read_text())
        work_dir = REPO / "models/detector" / name
        ours = iteration_times(newest_log(work_dir), args.compare_epochs)
        with tempfile.TemporaryDirectory(prefix=f"mmdet-{name}-") as tmp:
            subprocess.run(
                [BIN / "python", mmdet_train_script(), work_dir / "config.py", "--work-dir", tmp,
                 "--cfg-options", f"train_cfg.max_epochs={args.compare_epochs}"],
                cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
            )
            theirs = iteration_times(newest_log(Path(tmp)), args.compare_epochs)
        rows[name] = {
            "wall_seconds": round(wall, 1),
            "train_seconds": round(final["train_seconds"], 1),
            "epochs": len((REPO / "metrics/detector" / name / "history.csv").read_text().splitlines()) - 1,
            "val_bbox_mAP": final["val_bbox_mAP"],
            "test_bbox_mAP": final["test_bbox_mAP"],
            "test_bbox_mAP_50": final["test_bbox_mAP_50"],
            "test_bbox_AR_100": final["test_bbox_AR_100"],
            "stage_s_per_iter": round(statistics.median(ours), 4),
            "mmdet_tools_train_s_per_iter": round(statistics.median(theirs), 4),
            "overhead_percent": round(100 * (statistics.median(ours) / statistics.median(theirs) - 1), 1),
        }
        print(name, rows[name], flush=True)
    grid_wall = sum(row["wall_seconds"] for row in rows.values())
    result = {
        "cores": os.cpu_count(),
        "grid_wall_seconds": round(grid_wall, 1),
        "bench_seconds": round(time.perf_counter() - grid_started, 1),
        "compare_epochs": args.compare_epochs,
        "detectors": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Detector grid on {result['cores']} cores: {grid_wall:.0f} s of `dvc repro` for {len(rows)} detectors",
        "",
        f"Seconds per training iteration: the median of mmengine's logged `time` (5-iteration windows) over the "
        f"first {args.compare_epochs} epochs, less the start-up window, for our stage and for mmdet's tools/train.py "
        "on the same resolved config, run one after the other.",
        "",
        "| detector | wall s | epochs | val mAP | test mAP | test mAP50 | test AR@100 | stage s/iter | tools/train.py s/iter | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['wall_seconds']:.0f} | {row['epochs']} | {row['val_bbox_mAP']:.3f} | {row['test_bbox_mAP']:.3f} | "
            f"{row['test_bbox_mAP_50']:.3f} | {row['test_bbox_AR_100']:.3f} | {row['stage_s_per_iter']:.3f} | "
            f"{row['mmdet_tools_train_s_per_iter']:.3f} | {row['overhead_percent']:+.1f}% |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

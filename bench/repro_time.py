"""Benchmark: wall time of the default `dvc repro` from scratch, per stage and in total.

Runs in a fresh temporary copy of the repo (so nothing is cached) and writes
metrics/bench/repro_time.{json,md}. Run by hand: `.venv/bin/python bench/repro_time.py`.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="params file to benchmark")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/repro_time"), help="output path stem")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="skulab-bench-") as tmp:
        repo = Path(tmp)
        shutil.copy(REPO / "dvc.yaml", repo)
        shutil.copy(args.params, repo / "params.yaml")
        shutil.copy(REPO / "requirements.lock", repo)  # the package stage pins the model's requirements from it
        for name in ("stages", "src", "configs"):
            shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(REPO / "data/raw", repo / "data/raw")  # prepare's (empty) external-data dependency
        env["PYTHONPATH"] = str(repo / "src")  # run the copied code, not the editable install
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([BIN / "dvc", "init", "-q"], cwd=repo, check=True, env=env)
        subprocess.run([BIN / "skulab", "init-tracking"], cwd=repo, check=True, env=env)
        stages, current, started = {}, None, time.perf_counter()
        stage_start = started
        process = subprocess.Popen([BIN / "dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        for line in process.stdout:
            match = re.match(r"Running stage '([^']+)'", line)
            now = time.perf_counter()
            if match:
                if current:
                    stages[current] = now - stage_start
                current, stage_start = match.group(1), now
                print(line.strip(), flush=True)
        if process.wait() != 0:
            raise SystemExit(f"dvc repro failed (exit {process.returncode})")
        total = time.perf_counter() - started
        stages[current] = time.perf_counter() - stage_start
        summary = json.loads((repo / "metrics/summary.json").read_text())
    groups: dict[str, float] = {}
    for stage, seconds in stages.items():
        groups[stage.split("@")[0]] = groups.get(stage.split("@")[0], 0.0) + seconds
    result = {
        "total_seconds": round(total, 1),
        "cores": os.cpu_count(),
        "per_stage_group_seconds": {k: round(v, 1) for k, v in groups.items()},
        "per_stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "best_variant": summary["best_variant"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Default `dvc repro` from scratch: {total / 60:.1f} min on {os.cpu_count()} cores", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stages.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

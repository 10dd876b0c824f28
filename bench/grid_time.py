"""Benchmark: the default recognizer grid's wall time, `dvc repro` against `skulab grid --jobs N`, side by side.

Clones this checkout's last commit into a temporary folder, pulls the upstream stages' outputs
(prepare, the detectors, crop) from this checkout's DVC cache, so only recognizer cells train there,
and then, for each mode in turn: makes every recognizer cell dirty with a comment line in
stages/train_recognizer.py (committed: the queue starts each cell from the last commit), trains
the cells, commits the results, and records the command's wall time and each cell's metrics. The
modes run with the same thread count must give the same metrics; the bench fails otherwise.
Writes metrics/bench/grid_time.{json,md}. Run by hand on an idle machine:

    .venv/bin/python bench/grid_time.py                       # dvc repro, grid --jobs 1, grid --jobs 2
    .venv/bin/python bench/grid_time.py --modes grid2 grid2-omp1 --cells '*-0'
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CELL_STAGE = "stages/train_recognizer.py"

# mode -> (command after the repo's bin, environment additions, what it is)
MODES = {
    "repro": (["dvc", "repro", "train_recognizer"], {}, "`dvc repro train_recognizer` (one cell after the other)"),
    "grid1": (["skulab", "grid", "--jobs", "1"], {}, "`skulab grid --jobs 1`"),
    "grid2": (["skulab", "grid", "--jobs", "2"], {}, "`skulab grid --jobs 2`"),
    "grid2-omp1": (["skulab", "grid", "--jobs", "2"], {"OMP_NUM_THREADS": "1"}, "`OMP_NUM_THREADS=1 skulab grid --jobs 2`"),
    "repro-omp1": (["dvc", "repro", "train_recognizer"], {"OMP_NUM_THREADS": "1"}, "`OMP_NUM_THREADS=1 dvc repro train_recognizer`"),
}


def run(command: list, cwd: Path, env: dict, log=None) -> None:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-5:] if log is None else [f"see {log.name}"]
        raise SystemExit(f"`{' '.join(map(str, command))}` failed in {cwd}: " + " | ".join(tail))


def cell_metrics(repo: Path) -> dict[str, dict]:
    """Each cell's final.json, without its run id and timings (they differ between runs by design)."""
    cells = {}
    for final in sorted((repo / "metrics/recognizer").glob("*/final.json")):
        values = json.loads(final.read_text())
        cells[final.parent.name] = {k: v for k, v in values.items() if k != "run_id" and "seconds" not in k}
        cells[final.parent.name]["_train_seconds"] = values.get("train_seconds")
    return cells


def threads_of(mode: str) -> str:
    return MODES[mode][1].get("OMP_NUM_THREADS", "default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["repro", "grid1", "grid2"],
                        help="what to time, in this order (default: %(default)s)")
    parser.add_argument("--cells", nargs="*", default=[], metavar="PATTERN",
                        help="only the cells matching these patterns (skulab grid's; dvc repro then runs each matching cell)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/grid_time"), help="output path stem")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and print where it is")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OMP_NUM_THREADS"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="skulab-grid-bench-"))
    repo = tmp / "repo"
    log = open(tmp / "bench.log", "w")
    print(f"grid_time: clone of {head} in {repo}; commands' output in {log.name}", flush=True)
    run(["git", "clone", "-q", REPO, repo], tmp, env)
    env["PYTHONPATH"] = str(repo / "src")  # the clone's code, not the editable install's
    run(["git", "config", "user.email", "bench@skulab"], repo, env)
    run(["git", "config", "user.name", "grid_time bench"], repo, env)
    run([BIN / "dvc", "remote", "add", "--local", "checkout", REPO / ".dvc/cache"], repo, env)  # a DVC 3 cache is laid out as a remote
    run([BIN / "dvc", "pull", "-q", "--with-deps", "-r", "checkout", "crop"], repo, env, log)
    run([BIN / "skulab", "init-tracking"], repo, env, log)
    run([BIN / "dvc", "status", "-q", "crop"], repo, env)  # exit 1 would mean an upstream stage is stale

    from fnmatch import fnmatchcase

    from skulab.cli import select_cells
    from skulab.params import load_params

    results, reference = {}, {}
    for index, mode in enumerate(args.modes):
        command, extra, _ = MODES[mode]
        with open(repo / CELL_STAGE, "a") as stage:
            stage.write(f"# grid_time bench: {mode} ({index})\n")  # changes every cell's dependency hash
        run(["git", "commit", "-qam", f"bench: dirty every cell for {mode}"], repo, env)
        full = [BIN / command[0], *command[1:]]
        if command[0] == "skulab":
            full += args.cells
        elif args.cells:  # dvc repro takes the matching cells by name, as skulab grid selects them
            recognizer = load_params(repo / "params.yaml", sections=("recognizer",)).recognizer
            every = [f"train_recognizer@{variant}-{seed}" for variant in recognizer.variants for seed in recognizer.seeds]
            full = full[:-1] + select_cells(every, args.cells)
        print(f"grid_time: {mode}: {' '.join(map(str, [*(f'{k}={v}' for k, v in extra.items()), *command[:1], *full[1:]]))}", flush=True)
        log.write(f"\n===== {mode} =====\n")
        log.flush()
        started = time.perf_counter()
        run(full, repo, {**env, **extra}, log)
        seconds = time.perf_counter() - started
        cells = cell_metrics(repo)
        if args.cells:
            cells = {c: m for c, m in cells.items() if any(fnmatchcase(c, p) for p in args.cells)}
        run(["git", "add", "dvc.lock", "metrics"], repo, env)
        run(["git", "commit", "-qm", f"bench: {mode} results"], repo, env)
        train = [m.pop("_train_seconds") or 0.0 for m in cells.values()]
        results[mode] = {
            "command": MODES[mode][2],
            "threads_per_cell": threads_of(mode),
            "cells": len(cells),
            "wall_seconds": round(seconds, 1),
            "sum_cell_train_seconds": round(sum(train), 1),
            "mean_cell_train_seconds": round(sum(train) / max(len(train), 1), 1),
        }
        print(f"grid_time: {mode}: {len(cells)} cells in {seconds:.0f} s (cells' own training {sum(train):.0f} s in all)", flush=True)
        same_threads = reference.get(threads_of(mode))
        if same_threads is None:
            reference[threads_of(mode)] = (mode, cells)
        else:
            differing = sorted(c for c in cells if cells[c] != same_threads[1].get(c))
            results[mode]["metrics_equal_to"] = same_threads[0] if not differing else None
            if differing:
                write(Path(args.out), head, args.cells, results)
                raise SystemExit(f"grid_time: {mode}'s metrics differ from {same_threads[0]}'s in {', '.join(differing)}")
        write(Path(args.out), head, args.cells, results)
    log.close()
    for _ in range(60):  # the queue's workers leave once it is empty; the clone goes after them
        status = subprocess.run([BIN / "dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
        if "0 active, 0 idle" in status or "Worker status" not in status:
            break
        time.sleep(2)
    if args.keep:
        print(f"grid_time: kept {tmp}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def write(out: Path, head: str, cells: list[str], results: dict) -> None:
    """metrics/bench/grid_time.{json,md}: the modes timed so far (written after each one)."""
    first = next(iter(results.values()))["wall_seconds"]
    result = {"commit": head, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "cell_patterns": cells, "modes": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Recognizer grid wall time on {os.cpu_count()} cores ({result['date']}, commit {head})",
        "",
        "Upstream stages pulled from the cache; every recognizer cell dirty before each row; rows run one after the other.",
        "",
        "| command | threads per cell | cells | wall s | vs first row | cells' own training s (sum) | per cell (mean) | metrics |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results.values():
        same = f"= {row['metrics_equal_to']}" if row.get("metrics_equal_to") else "reference"
        lines.append(f"| {row['command']} | {row['threads_per_cell']} | {row['cells']} | {row['wall_seconds']:.0f} | "
                     f"{row['wall_seconds'] / first:.2f}x | {row['sum_cell_train_seconds']:.0f} | {row['mean_cell_train_seconds']:.1f} | {same} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: OpenMP's wait policy for one training process alone and for two sharing the cores.

A recognizer-sized training step (timm's MobileNetV3-small, batch 64 of 64 px crops, Adam) and an
evaluation batch, timed in fresh processes: alone with OpenMP's default wait and with
OMP_WAIT_POLICY=PASSIVE, then two processes at once (torch's default threads each) with each
policy, and two at once with one thread each. Why `skulab grid --jobs N` (N > 1) and the test
suite set PASSIVE, and a plain `dvc repro` cell does not. Writes metrics/bench/omp_wait.{json,md}.
Run by hand on an idle machine: `.venv/bin/python bench/omp_wait.py`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = """
import json, os, time
import torch, timm
torch.manual_seed(0)
model = timm.create_model("mobilenetv3_small_100", num_classes=20, pretrained=False)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x, y = torch.randn(64, 3, 64, 64), torch.randint(0, 20, (64,))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
for _ in range(5):
    step()
started = time.perf_counter()
for _ in range({steps}):
    step()
train = (time.perf_counter() - started) / {steps}
model.eval()
with torch.no_grad():
    started = time.perf_counter()
    for _ in range({steps}):
        model(x)
    evaluate = (time.perf_counter() - started) / {steps}
print(json.dumps({{"threads": torch.get_num_threads(), "train_ms": 1000 * train, "eval_ms": 1000 * evaluate}}))
"""

# name -> (processes at once, OMP_WAIT_POLICY or None for OpenMP's default, OMP_NUM_THREADS or None)
CASES = {
    "alone, default wait": (1, None, None),
    "alone, PASSIVE": (1, "PASSIVE", None),
    "2 at once, default wait": (2, None, None),
    "2 at once, PASSIVE": (2, "PASSIVE", None),
    "2 at once, 1 thread each": (2, None, "1"),
}


def measure(processes: int, policy: str | None, threads: str | None, steps: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env |= {"OMP_WAIT_POLICY": policy} if policy else {}
    env |= {"OMP_NUM_THREADS": threads} if threads else {}
    running = [subprocess.Popen([sys.executable, "-c", STEP.format(steps=steps)], env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    results = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"omp_wait: a measuring process failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per process (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all cases; the median is kept (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "metrics/bench/omp_wait"), help="output path stem")
    args = parser.parse_args()
    runs: dict[str, list[list[dict]]] = {name: [] for name in CASES}
    for round_ in range(args.rounds):
        for name, case in CASES.items():
            runs[name].append(measure(*case, args.steps))
            print(f"omp_wait: round {round_ + 1}: {name}: {runs[name][-1]}", flush=True)

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    rows = {}
    for name, (processes, _, _) in CASES.items():
        train = median([p["train_ms"] for run in runs[name] for p in run])
        evaluate = median([p["eval_ms"] for run in runs[name] for p in run])
        rows[name] = {
            "processes": processes,
            "threads_each": runs[name][0][0]["threads"],
            "train_ms_per_step": round(train, 1),
            "eval_ms_per_batch": round(evaluate, 1),
            "train_steps_per_s_all": round(processes * 1000 / train, 2),  # what the machine gets done
        }
    base = rows["alone, default wait"]["train_steps_per_s_all"]
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "steps": args.steps, "rounds": args.rounds, "cases": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# OpenMP wait policy, one training process alone and two sharing {os.cpu_count()} cores ({result['date']})",
        "",
        f"MobileNetV3-small, batch 64 of 64 px, Adam; {args.steps} timed steps per process, median over {args.rounds} rounds "
        "(`bench/omp_wait.py`). Throughput: training steps per second of all processes together.",
        "",
        "| case | threads each | train ms/step | eval ms/batch | throughput | vs alone, default |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['threads_each']} | {row['train_ms_per_step']:.0f} | {row['eval_ms_per_batch']:.0f} | "
                     f"{row['train_steps_per_s_all']:.2f}/s | {row['train_steps_per_s_all'] / base:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

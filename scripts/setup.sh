#!/usr/bin/env bash
# One-command set-up, idempotent: a venv (.venv) with the pinned dependencies, DVC initialised,
# and the MLflow store and experiment created once (before any stage runs).
#
# Prints one line per step with its time (the mmcv build: "object k of N" as it goes); everything
# pip, the compiler and the tools print goes to the log, .venv/setup.log (SKULAB_SETUP_LOG moves
# it). If a step fails, the log's last lines and its path are shown and the exit code is non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
started=$(date +%s)

duration() {
  local s=$1
  if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv .venv
fi
log=${SKULAB_SETUP_LOG:-$PWD/.venv/setup.log}
mkdir -p "$(dirname "$log")"
log=$(cd "$(dirname "$log")" && pwd)/$(basename "$log")
echo "skulab set-up $(date '+%F %T')" >"$log"

fail() {
  echo "error: $1 failed; last lines of $log:" >&2
  tail -n 30 "$log" | cut -c1-300 | sed 's/^/  | /' >&2
  echo "error: set-up failed; full log: $log" >&2
  exit 1
}

# step LABEL COMMAND...: runs COMMAND with its output in the log and prints one line for it (on a
# terminal with the time ticking while it runs).
step() {
  local label=$1 t0 pid
  shift
  t0=$(date +%s)
  printf '\n==> %s: %s\n' "$label" "$*" >>"$log"
  if [ -t 1 ]; then
    "$@" >>"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      printf '\r  %s ... %s ' "$label" "$(duration $(($(date +%s) - t0)))"
      sleep 1
    done
    if ! wait "$pid"; then printf '\n'; fail "$label"; fi
    printf '\r  %s ... done (%s)\n' "$label" "$(duration $(($(date +%s) - t0)))"
  else
    printf '  %s ... ' "$label"
    if ! "$@" >>"$log" 2>&1; then printf '\n'; fail "$label"; fi
    printf 'done (%s)\n' "$(duration $(($(date +%s) - t0)))"
  fi
}

stamp=.venv/.skulab-installed
wanted=$(cat requirements.lock pyproject.toml scripts/build_mmcv.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing pinned dependencies into .venv (first time: several minutes); log: $log"
  step "pip, setuptools<82, wheel" .venv/bin/pip install --upgrade pip "setuptools<82" wheel
  step "requirements.lock (torch, mmdet, DVC, MLflow, ...)" .venv/bin/pip install -r requirements.lock
  # mmcv (for mmdet) has no wheel on PyPI: build it once (a few minutes), then reuse the cached wheel.
  # build_mmcv.sh prints its own progress and, on failure, the log's tail.
  mmcv_wheel=$(PY=.venv/bin/python SKULAB_LOG="$log" bash scripts/build_mmcv.sh) || exit 1
  step "mmcv ($(basename "$(dirname "$mmcv_wheel")"))" .venv/bin/pip install --no-deps --force-reinstall "$mmcv_wheel"
  step "skulab (editable)" .venv/bin/pip install --no-deps --no-build-isolation -e .
  echo "$wanted" >"$stamp"
fi

if [ ! -d .dvc ]; then
  if git rev-parse --git-dir >/dev/null 2>&1; then
    step "dvc init" .venv/bin/dvc init -q
  else
    step "dvc init (no git)" .venv/bin/dvc init -q --no-scm
  fi
fi
# Their one-line answers on the terminal; warnings and errors in the log (an error's tail is shown).
for command in check init-tracking; do
  printf '\n==> skulab %s\n' "$command" >>"$log"
  answer=$(.venv/bin/skulab "$command" 2>>"$log") || fail "skulab $command"
  echo "  $answer"
done
echo "ready in $(duration $(($(date +%s) - started))): source .venv/bin/activate && dvc repro"
# MLflow 3.17's UI opens an experiment on its GenAI view unless told otherwise (or switched once).
experiment_id=$(sed -n 's/.*(id \([0-9]*\)).*/\1/p' <<<"$answer")
if [ -n "$experiment_id" ]; then
  echo "runs: mlflow ui, then http://127.0.0.1:5000/#/experiments/$experiment_id?workflowType=machine_learning"
fi

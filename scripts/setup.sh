#!/usr/bin/env bash
# One-command set-up, idempotent: a venv (.venv) with the pinned dependencies, DVC initialised,
# and the MLflow store and experiment created once (before any stage runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.skulab-installed
wanted=$(cat requirements.lock pyproject.toml scripts/build_mmcv.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing pinned dependencies into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip "setuptools<82" wheel
  .venv/bin/pip install -q -r requirements.lock
  # mmcv (for mmdet) has no wheel on PyPI: build it once (~20 min), then reuse the cached wheel.
  mmcv_wheel=$(PY=.venv/bin/python bash scripts/build_mmcv.sh)
  .venv/bin/pip install -q --no-deps "$mmcv_wheel"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  echo "$wanted" > "$stamp"
fi

if [ ! -d .dvc ]; then
  if git rev-parse --git-dir >/dev/null 2>&1; then .venv/bin/dvc init -q; else .venv/bin/dvc init -q --no-scm; fi
fi
.venv/bin/skulab check
.venv/bin/skulab init-tracking
echo "ready: source .venv/bin/activate && dvc repro"

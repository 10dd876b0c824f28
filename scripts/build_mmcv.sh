#!/usr/bin/env bash
# Builds the mmcv wheel mmdet 3.3 needs (PyPI has only its sdist) and caches it outside the repo,
# keyed by mmcv, torch and Python versions, so later set-ups and CI reuse it.
set -euo pipefail
PY=${PY:-.venv/bin/python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${SKULAB_WHEEL_CACHE:-$HOME/.cache/skulab/wheels}/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag
if ls "$cache"/mmcv-*.whl >/dev/null 2>&1; then echo "$cache"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --no-deps --no-build-isolation --no-binary mmcv -d "$work" "mmcv==$MMCV_VERSION" >&2
tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
src="$work/mmcv-$MMCV_VERSION"
# torch >= 2.14 headers need C++20; mmcv 2.1 hard-codes c++14/17.
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
(cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} "$OLDPWD/$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" . >&2)
mkdir -p "$cache"
cp "$work"/dist/mmcv-*.whl "$cache"/
echo "$cache"

#!/usr/bin/env bash
# Prints the path of an mmcv wheel built for this venv's torch and Python, building it first when
# the cache has none. PyPI has mmcv only as a source distribution, and mmdet 3.3 needs mmcv < 2.2.
# The cache lives outside the repo (keyed by mmcv, torch and Python versions), so later set-ups and
# CI on the same machine reuse it. First build: about 20 min of CPU on 2 cores.
set -euo pipefail
PY=${PY:-.venv/bin/python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${SKULAB_WHEEL_CACHE:-$HOME/.cache/skulab/wheels}/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag
wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then echo "$wheel"; exit 0; fi

echo "building mmcv $MMCV_VERSION for torch $torch_version ($py_tag), CPU ops; cached in $cache" >&2
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# mmcv's setup.py imports pkg_resources (setuptools < 82), so no build isolation, even for metadata.
"$PY" -m pip install -q "setuptools<82" wheel >&2
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary mmcv -d "$work" "mmcv==$MMCV_VERSION" >&2
tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
src="$work/mmcv-$MMCV_VERSION"
# torch >= 2.14 headers need C++20; mmcv 2.1 hard-codes c++14/17.
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
(cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" . >&2)
mkdir -p "$cache"
cp "$work"/dist/mmcv-*.whl "$cache"/
echo "mmcv built in $(( $(date +%s) - started )) s" >&2
ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl | head -n1

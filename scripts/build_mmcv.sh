#!/usr/bin/env bash
# Prints the path of an mmcv wheel built for this venv's torch and Python, building it first when
# the cache has none. PyPI has mmcv only as a source distribution, and mmdet 3.3 needs mmcv < 2.2.
# The cache lives outside the repo (keyed by mmcv, torch and Python versions and the build recipe),
# so later set-ups and CI on the same machine reuse it.
#
# The build (CPU ops only: 77 C++ files) is made cheap in two ways, neither of which changes the
# compiled code's behaviour (-O3 and every other flag stay as they are):
#   -g0   Python's own CFLAGS carry -g, and debug info for the torch headers was ~60% of the CPU time;
#   PCH   63 of the 77 files start with #include "pytorch_cpp_helper.hpp" (torch/types.h, i.e. all of
#         ATen); it is precompiled once, by the first compile, with that compile's exact flags
#         (a g++ PCH is only used when the flags match; otherwise g++ silently parses the header).
# Measured 2026-11-29 on 2 cores: see README ("Set up, run, test").
#
# Messages and progress ("object k of N") go to stderr; the full pip/compiler output goes to
# $SKULAB_LOG (default: build.log beside the cached wheel). On failure the log's tail is shown.
set -euo pipefail
PY=${PY:-.venv/bin/python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
# Bump when the build recipe (flags, patches) changes, so an older wheel is never taken for a new one.
BUILD_TAG=g0-pch
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${SKULAB_WHEEL_CACHE:-$HOME/.cache/skulab/wheels}/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag-$BUILD_TAG
wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then echo "$wheel"; exit 0; fi

mkdir -p "$cache"
log=${SKULAB_LOG:-$cache/build.log}
log=$(cd "$(dirname "$log")" && pwd)/$(basename "$log")
jobs=${MAX_JOBS:-$(nproc)}
echo "building mmcv $MMCV_VERSION for torch $torch_version ($py_tag), CPU ops, $jobs compile jobs; log: $log" >&2
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

elapsed() { local s=$(( $(date +%s) - started )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
offset=0
fail() {
  printf '\n' >&2
  # A failed compile is reported early in ninja's output and buried under pip's traceback: show both.
  if tail -c +"$((offset + 1))" "$log" | grep -q -E '^ *FAILED: |: error: '; then
    echo "error: $1 after $(elapsed); the first compiler errors:" >&2
    tail -c +"$((offset + 1))" "$log" | grep -m 12 -E '^ *FAILED: |: error: ' | cut -c1-300 | sed 's/^ */  | /' >&2
  fi
  echo "error: $1 after $(elapsed); last lines of $log:" >&2
  tail -n 30 "$log" | cut -c1-300 | sed 's/^/  | /' >&2
  echo "error: mmcv build failed; full log: $log" >&2
  exit 1
}
printf '\n==> mmcv %s build, %s\n' "$MMCV_VERSION" "$(date '+%F %T')" >>"$log"

{
  # mmcv's setup.py imports pkg_resources (setuptools < 82), so no build isolation, even for metadata.
  "$PY" -m pip install "setuptools<82" wheel &&
    "$PY" -m pip download --no-deps --no-build-isolation --no-binary mmcv -d "$work" "mmcv==$MMCV_VERSION"
} >>"$log" 2>&1 || fail "downloading the mmcv source"
tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
src="$work/mmcv-$MMCV_VERSION"
pch="$work/pch"
mkdir -p "$pch"
cp "$src/mmcv/ops/csrc/common/pytorch_cpp_helper.hpp" "$pch/"

# torch >= 2.14 headers need C++20; mmcv 2.1 hard-codes c++14/17. Then the flags above: -iquote puts
# the header copy (with its .gch beside it) ahead of the original for #include "...", wherever the
# flag sits on the command line; -Winvalid-pch logs it if a PCH is found but cannot be used.
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
sed -i -E "s|extra_compile_args\['cxx'\] = \['-std=c\+\+20'\]|extra_compile_args['cxx'] = ['-std=c++20', '-g0', '-iquote', '$pch', '-Winvalid-pch']|" "$src/setup.py"
[ "$(grep -c -- "'-g0', '-iquote'" "$src/setup.py")" = 2 ] || fail "patching mmcv's setup.py (unexpected mmcv source)"

# A compiler wrapper (CXX) that, before the first compile, precompiles the helper header with the
# same arguments as that compile (minus its source, output and depfile), under a lock because
# ninja runs the first compiles in parallel. If that fails the build goes on without the PCH.
cat >"$work/g++-pch" <<'EOF'
#!/usr/bin/env bash
real=${SKULAB_REAL_CXX:-c++}
hdr=$SKULAB_PCH_DIR/pytorch_cpp_helper.hpp
case " $* " in *" -c "*) ;; *) exec "$real" "$@" ;; esac
if [ ! -e "$hdr.gch" ] && [ ! -e "$hdr.failed" ]; then
  exec 9>"$hdr.lock"
  flock 9
  if [ ! -e "$hdr.gch" ] && [ ! -e "$hdr.failed" ]; then
    args=() skip=0
    for a in "$@"; do
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      case $a in
        -o | -MF) skip=1 ;;
        -c | -MMD) ;;
        *.cpp | *.cc | *.cxx) ;;
        *) args+=("$a") ;;
      esac
    done
    echo "precompiling $hdr: $real ${args[*]}"
    if "$real" "${args[@]}" -x c++-header -c "$hdr" -o "$hdr.gch.tmp"; then
      mv "$hdr.gch.tmp" "$hdr.gch"
    else
      echo "warning: precompiling the header failed; compiling without it"
      touch "$hdr.failed"
    fi
  fi
  exec 9>&-
fi
exec "$real" "$@"
EOF
chmod +x "$work/g++-pch"

offset=$(stat -c %s "$log")
(
  cd "$src"
  export SKULAB_REAL_CXX=${CXX:-c++}
  export MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$jobs CXX="$work/g++-pch" SKULAB_PCH_DIR="$pch"
  TIMEFORMAT='pip wheel: %0R s wall, %0U s user + %0S s sys CPU'
  # -v streams setup.py's output (ninja's "[k/N] c++ ..." lines) into the log as it happens.
  time "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$work/dist" .
) >>"$log" 2>&1 &
build=$!

# Progress from ninja's "[k/N]" lines (k: objects finished); in place on a terminal, else every 10%.
shown=-1
while kill -0 "$build" 2>/dev/null; do
  sleep 2
  # pip -v indents the build's output; ninja prints "[k/N] <command>" as each object is finished.
  last=$(tail -c +"$((offset + 1))" "$log" | grep -o '^ *\[[0-9]*/[0-9]*\]' | tail -n1 || true)
  if [ -z "$last" ]; then
    if [ -t 2 ]; then printf '\r  mmcv: preparing the build, %s elapsed ' "$(elapsed)" >&2; fi
    continue
  fi
  last=${last##* }
  k=${last#[}; k=${k%%/*}; n=${last#*/}; n=${n%]}
  pct=$((100 * k / n))
  line="  mmcv: object $k of $n ($pct%), $(elapsed) elapsed"
  if [ -t 2 ]; then
    printf '\r%s ' "$line" >&2
  elif [ $((pct / 10)) -gt "$shown" ]; then
    shown=$((pct / 10))
    echo "$line" >&2
  fi
done
if [ -t 2 ]; then printf '\n' >&2; fi
wait "$build" || fail "building the wheel"
[ -e "$pch/pytorch_cpp_helper.hpp.gch" ] || echo "note: built without the precompiled header (see $log)" >&2

built=$(ls "$work"/dist/mmcv-*.whl | head -n1)
cp "$built" "$cache/.partial" && mv "$cache/.partial" "$cache/$(basename "$built")"  # never half a wheel
echo "mmcv built in $(elapsed) ($(grep -o 'pip wheel: .*' "$log" | tail -n1)); cached in $cache" >&2
ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl | head -n1

#!/usr/bin/env bash
# Screenshots an MLflow store's experiment page as `mlflow ui` shows it, in headless Chromium, so the
# UI can be checked without a browser: which view an experiment opens on, and the runs table with
# its Dataset column.
#
#   bash scripts/ui_screenshot.sh STORE [OUT_DIR] [EXPERIMENT] [PORT]
#
# STORE: an mlflow.db file, a store URI (sqlite:////abs/path/mlflow.db, postgresql://...), or a running
# tracking server's http(s):// URL (scripts/tracking_server.sh), which is then shot as it is. Use a
# copy of a SQLite store others are writing to. OUT_DIR: where the PNGs go (default /tmp/ui_check). EXPERIMENT: its name
# (default skulab). PORT: for the temporary server (default 5123).
# Writes OUT_DIR/experiment_default.png (the experiment's URL as a fresh browser opens it) and
# OUT_DIR/experiment_runs.png (the same URL with ?workflowType=machine_learning, the UI's "Model
# training" switch), and prints the runs table's dataset inputs per run as the REST API returns them.
# Needs the `chromium` package (Debian: apt-get install chromium). The temporary server is stopped at the end.
set -euo pipefail
store=${1:?usage: scripts/ui_screenshot.sh STORE [OUT_DIR] [EXPERIMENT] [PORT]}
out=${2:-/tmp/ui_check}
experiment=${3:-skulab}
port=${4:-5123}
case $store in
  *://*) uri=$store ;;
  *) [ -f "$store" ] || { echo "error: no such store: $store" >&2; exit 1; }
     uri=sqlite:///$(cd "$(dirname "$store")" && pwd)/$(basename "$store") ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no chromium found (apt-get install chromium)" >&2; exit 1; }
case $uri in
  http://*|https://*)  # a running tracking server: its own UI
    base=${uri%/}
    curl -sf "$base/health" >/dev/null || { echo "error: no tracking server answers on $base/health" >&2; exit 1; } ;;
  *)
    base=http://127.0.0.1:$port
    # Stopping `mlflow ui` (SIGTERM) stops its uvicorn workers too.
    .venv/bin/mlflow ui --backend-store-uri "$uri" --host 127.0.0.1 --port "$port" >"$out/mlflow_ui.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 120); do
      curl -sf "$base/health" >/dev/null && break
      kill -0 "$server" 2>/dev/null || { echo "error: mlflow ui exited; see $out/mlflow_ui.log" >&2; exit 1; }
      sleep 1
    done
    curl -sf "$base/health" >/dev/null || { echo "error: mlflow ui did not answer on $base" >&2; exit 1; } ;;
esac

id=$(curl -sf "$base/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=$experiment" |
  .venv/bin/python -c 'import json, sys; e = json.load(sys.stdin)["experiment"]; print(e["experiment_id"]); print({t["key"]: t["value"] for t in e.get("tags", [])}.get("mlflow.experimentKind", "(no mlflow.experimentKind tag)"), file=sys.stderr)' 2>"$out/kind.txt") ||
  { echo "error: no experiment '$experiment' in $uri" >&2; exit 1; }
echo "experiment '$experiment' (id $id), mlflow.experimentKind: $(cat "$out/kind.txt")"

shoot() { # URL PNG
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
    --virtual-time-budget=15000 --screenshot="$2" "$1" >>"$out/chromium.log" 2>&1
  echo "$2  <- $1"
}
shoot "$base/#/experiments/$id" "$out/experiment_default.png"
shoot "$base/#/experiments/$id?workflowType=machine_learning" "$out/experiment_runs.png"

# What the Dataset column is filled from: each run's dataset inputs.
curl -sf -X POST "$base/ajax-api/2.0/mlflow/runs/search" -H 'Content-Type: application/json' \
  -d "{\"experiment_ids\": [\"$id\"], \"max_results\": 1000}" | .venv/bin/python -c '
import json, sys
runs = json.load(sys.stdin).get("runs", [])
for run in runs:
    inputs = run.get("inputs", {}).get("dataset_inputs", [])
    names = ", ".join("{name} ({digest})".format(**i["dataset"]) for i in inputs) or "-"
    print("  %-40s %s" % (run["info"]["run_name"], names))
print("%d runs, %d with a dataset input" % (len(runs), sum(bool(r.get("inputs", {}).get("dataset_inputs")) for r in runs)))
'

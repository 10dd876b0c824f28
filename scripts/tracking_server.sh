#!/usr/bin/env bash
# An MLflow tracking server for many writers (parallel cells, several machines): PostgreSQL as the
# backend store (runs, metrics, the model registry) and artifacts served by the server itself
# (--artifacts-destination), so clients need nothing but its URL:
#
#   bash scripts/tracking_server.sh            # then, in every shell that runs stages:
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# PostgreSQL comes from Debian's packages (installed with apt-get when missing and run as root). The
# script starts the cluster if it is down, creates the role and the database if they are missing,
# prints the MLFLOW_TRACKING_URI to export and runs `mlflow server` in the foreground (Ctrl+C stops
# it; PostgreSQL keeps running: `pg_ctlcluster <version> <cluster> stop`). Settings, by environment:
#   SKULAB_SERVER_HOST  127.0.0.1  interface to bind; 0.0.0.0 for other machines (then also set
#                                  SKULAB_ALLOWED_HOSTS to the name/IP they use, and a real password)
#   SKULAB_SERVER_PORT  5000
#   SKULAB_ALLOWED_HOSTS           mlflow server --allowed-hosts (default: localhost and private IPs)
#   SKULAB_SERVER_WORKERS 2        mlflow server --workers
#   SKULAB_ARTIFACTS    ~/.local/share/skulab/mlflow-artifacts  where the server keeps artifacts (a folder,
#                                  or s3://bucket/prefix with boto3 installed and AWS_* set for the server)
#   SKULAB_PG_DB        skulab     database (created if missing)
#   SKULAB_PG_USER      skulab     role (created if missing)
#   SKULAB_PG_PASSWORD  skulab     its password (set when the role is created)
#   SKULAB_PG_CLUSTER   the first cluster pg_lsclusters lists, as VERSION/NAME (created if none)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

HOST=${SKULAB_SERVER_HOST:-127.0.0.1}
PORT=${SKULAB_SERVER_PORT:-5000}
WORKERS=${SKULAB_SERVER_WORKERS:-2}
ARTIFACTS=${SKULAB_ARTIFACTS:-${XDG_DATA_HOME:-$HOME/.local/share}/skulab/mlflow-artifacts}
DB=${SKULAB_PG_DB:-skulab}
ROLE=${SKULAB_PG_USER:-skulab}
PASSWORD=${SKULAB_PG_PASSWORD:-skulab}
MLFLOW=${MLFLOW:-$REPO/.venv/bin/mlflow}
PYTHON=$(dirname "$MLFLOW")/python

die() { echo "error: tracking_server.sh: $*" >&2; exit 2; }

identifier='^[a-z_][a-z0-9_]*$'
[[ $DB =~ $identifier ]] || die "SKULAB_PG_DB: '$DB' is not a plain PostgreSQL name (lower case, digits, _)"
[[ $ROLE =~ $identifier ]] || die "SKULAB_PG_USER: '$ROLE' is not a plain PostgreSQL name (lower case, digits, _)"
[[ $PORT =~ ^[0-9]+$ ]] || die "SKULAB_SERVER_PORT: '$PORT' is not a port number"
[[ $PASSWORD != *"'"* && $PASSWORD != *"@"* && $PASSWORD != *"/"* && $PASSWORD != *":"* ]] \
  || die "SKULAB_PG_PASSWORD: use no quote, @, / or : (it goes into a URI)"
[ -x "$MLFLOW" ] || die "$MLFLOW not found; run scripts/setup.sh first"
"$PYTHON" -c "import psycopg2" 2>/dev/null \
  || die "psycopg2 missing in $(dirname "$MLFLOW"); run scripts/setup.sh (requirements.lock pins psycopg2-binary)"

# PostgreSQL from Debian's packages.
if ! command -v pg_lsclusters >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tracking_server.sh: installing PostgreSQL (apt-get install postgresql)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } \
      || die "apt-get install postgresql failed"
  else
    die "PostgreSQL is not installed (pg_lsclusters missing); install Debian's package: sudo apt-get install postgresql"
  fi
fi

as_postgres() {  # run a PostgreSQL client as the postgres superuser (it refuses root)
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"
  else sudo -u postgres "$@"
  fi
}

if [ -n "${SKULAB_PG_CLUSTER:-}" ]; then
  version=${SKULAB_PG_CLUSTER%%/*}; cluster=${SKULAB_PG_CLUSTER#*/}
  line=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c') \
    || die "SKULAB_PG_CLUSTER: pg_lsclusters failed"
  [ -n "$line" ] || die "SKULAB_PG_CLUSTER: no cluster $version/$cluster (pg_lsclusters lists: $(pg_lsclusters -h | awk '{printf "%s/%s ", $1, $2}'))"
else
  line=$(pg_lsclusters -h | head -n 1)
  if [ -z "$line" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    echo "tracking_server.sh: creating PostgreSQL cluster $version/main" >&2
    pg_createcluster "$version" main >/dev/null
    line=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"')
  fi
fi
read -r version cluster pg_port status _ <<<"$line"
if [ "$status" != online ]; then
  echo "tracking_server.sh: starting PostgreSQL cluster $version/$cluster (port $pg_port)" >&2
  pg_ctlcluster "$version" "$cluster" start || die "pg_ctlcluster $version $cluster start failed (see /var/log/postgresql/)"
fi
for _ in $(seq 50); do
  as_postgres pg_isready -q -p "$pg_port" && break
  sleep 0.2
done
as_postgres pg_isready -q -p "$pg_port" || die "PostgreSQL $version/$cluster does not answer on port $pg_port"

psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" -d postgres -tAc "$1"; }
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  psql_admin "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >/dev/null
  echo "tracking_server.sh: created PostgreSQL role $ROLE" >&2
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_admin "CREATE DATABASE $DB OWNER $ROLE" >/dev/null
  echo "tracking_server.sh: created PostgreSQL database $DB" >&2
fi

case $ARTIFACTS in
  *://*) ;;
  *) mkdir -p "$ARTIFACTS"; ARTIFACTS=$(cd "$ARTIFACTS" && pwd) ;;
esac
shown_host=$HOST
[ "$HOST" = 0.0.0.0 ] && shown_host=$(hostname -f 2>/dev/null || hostname)
echo "MLflow tracking server: store postgresql://$ROLE@127.0.0.1:$pg_port/$DB, artifacts $ARTIFACTS"
echo "export MLFLOW_TRACKING_URI=http://$shown_host:$PORT"

# MLflow's job runner (GenAI scorers, periodic trace jobs: eight more processes) is not needed for training runs.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
args=(server --backend-store-uri "postgresql+psycopg2://$ROLE:$PASSWORD@127.0.0.1:$pg_port/$DB"
      --artifacts-destination "$ARTIFACTS" --host "$HOST" --port "$PORT" --workers "$WORKERS")
[ -n "${SKULAB_ALLOWED_HOSTS:-}" ] && args+=(--allowed-hosts "$SKULAB_ALLOWED_HOSTS")
exec "$MLFLOW" "${args[@]}"

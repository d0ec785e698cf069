#!/usr/bin/env bash
# `make serve`: the embedded S3, a local Prefect server (SQLite under .ganforge/), one process worker
# per work pool and every deployment of prefect.yaml. All run in the background, each in a session of
# its own: pids in .ganforge/*.pid, logs in .ganforge/*.log; `make stop` ends them by pid.
set -euo pipefail
STATE=.ganforge
mkdir -p "$STATE"
export PREFECT_HOME="$PWD/$STATE/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false
# The pull step of prefect.yaml sets each run's working directory from the worker's environment.
export GANFORGE_PROJECT_DIR="$PWD"

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start() {  # start NAME COMMAND...: once; its pid is also its session and process group id
  local name=$1; shift
  if running "$name"; then
    echo "$name: already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  # bash starts background commands with SIGINT ignored, and a Prefect worker stops on SIGTERM by
  # sending itself SIGINT: restore it, or `make stop` would have to kill the worker.
  ( trap - INT; exec setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null ) &
  echo $! >"$STATE/$name.pid"
}

if [[ -z "${AWS_ENDPOINT_URL:-}${AWS_ENDPOINT_URL_S3:-}" ]]; then
  ganforge s3 start >/dev/null
  # shellcheck disable=SC1091
  source "$STATE/s3.env"
fi

if running prefect-server && [[ -f "$STATE/prefect.env" ]]; then
  # shellcheck disable=SC1091
  source "$STATE/prefect.env"
else
  port=$(python -c "from gan_core.s3server import free_port, port_is_free; print(4200 if port_is_free(4200) else free_port())")
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  start prefect-server prefect server start --host 127.0.0.1 --port "$port"
fi
prefect server status --wait --timeout 120 >/dev/null || { tail -20 "$STATE/prefect-server.log"; exit 1; }
echo "export PREFECT_API_URL=$PREFECT_API_URL" >"$STATE/prefect.env"

for pool in gpu cpu; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process >/dev/null
  start "prefect-worker-$pool" prefect worker start --pool "$pool"
done
prefect --no-prompt deploy --all >"$STATE/deploy.log" 2>&1 || { tail -30 "$STATE/deploy.log"; exit 1; }

COLUMNS=120 prefect deployment ls
python - <<'PY'
"""Each deployment's next scheduled run (the server schedules a new deployment within seconds)."""
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter
from prefect.client.schemas.sorting import FlowRunSort


def next_run(client, deployment):
    for _ in range(60 if deployment.schedules else 1):
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}),
                                     flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
        if runs:
            return runs[0].expected_start_time.isoformat()
        time.sleep(0.5)
    return "on demand"


with get_client(sync_client=True) as client:
    for deployment in client.read_deployments():
        name = f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"
        crons = ", ".join(f"cron '{s.schedule.cron}' {s.schedule.timezone}" for s in deployment.schedules)
        print(f"{name:27} next run: {next_run(client, deployment):27} {crons}")
PY
cat <<MSG

Prefect UI and API: ${PREFECT_API_URL%/api}   (logs and pids in $STATE/; stop everything with: make stop)
  source $STATE/prefect.env; source $STATE/s3.env
  prefect deployment run train-and-publish/training                   # train on the gpu pool, publish the model, promote it if it passes the gate
  prefect deployment run generate/batch-generation        # generate now from the production model
MSG

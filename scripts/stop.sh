#!/usr/bin/env bash
# `make stop`: end what `make serve` and `make run` started, by the pids they recorded; nothing else.
set -uo pipefail
STATE=.ganforge
PATH="${VENV:-.venv}/bin:$PATH"  # `ganforge s3 stop` below, when run as `bash scripts/stop.sh` outside make

stop() {  # stop NAME: its process group (a worker's flow runs too), TERM first, KILL after 30 s
  local pid_file="$STATE/$1.pid" pid
  [[ -f "$pid_file" ]] || return 0
  pid=$(cat "$pid_file")
  # Only a live prefect process that leads its own group: a recycled pid is left alone.
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q prefect \
      && [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; then
    kill -TERM -- "-$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid"
    echo "stopped $1 (pid $pid)"
  fi
  rm -f "$pid_file"
}

for name in prefect-worker-cpu prefect-worker-gpu prefect-server; do
  stop "$name"
done
rm -f "$STATE/prefect.env"
ganforge s3 stop >/dev/null && echo "stopped the embedded S3 (if it was running)"

# Sourced by scripts/run.sh (and measured by benchmarks/pipeline.py): one local Prefect server for a
# whole `dvc repro`. Without PREFECT_API_URL every stage's process starts an ephemeral server of its
# own, 10-27 s each on 2 cores; with one running, a stage's flow costs about 1.3 s of Prefect.

# Starts `prefect server start` on a free loopback port unless PREFECT_API_URL is already set,
# exports PREFECT_API_URL, waits until it is healthy, and stops it (by its pid) when the shell exits.
start_local_prefect_server() {
  if [[ -n "${PREFECT_API_URL:-}" ]]; then
    return 0
  fi
  local port log=".ganforge/prefect-server.log"
  port=$(python -c "from gan_core.s3server import free_port; print(free_port())")
  mkdir -p .ganforge
  prefect server start --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
  LOCAL_PREFECT_PID=$!
  trap 'kill "$LOCAL_PREFECT_PID" 2>/dev/null || true; wait "$LOCAL_PREFECT_PID" 2>/dev/null || true' EXIT
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  python - "$PREFECT_API_URL/health" "$log" "$LOCAL_PREFECT_PID" <<'PY'
import os, sys, time, urllib.request
url, log, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])

def exited() -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:  # exited but not yet reaped by the shell: a zombie
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except ProcessLookupError:
        return True
    except OSError:
        return False  # no /proc here: the deadline decides

deadline = time.monotonic() + 120
while True:
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except OSError:
        if exited():
            sys.exit(f"prefect server exited: see {log}")
        if time.monotonic() > deadline:
            sys.exit(f"prefect server not healthy after 120 s: see {log}")
        time.sleep(0.3)
PY
}

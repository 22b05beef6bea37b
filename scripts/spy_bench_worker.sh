#!/bin/bash
# Run `mle-stream bench --json` and record its worker process with py-spy (all threads, idle too).
# usage: scripts/spy_bench_worker.sh OUT_PREFIX [py-spy record options...]
out=$1; shift
export MLFLOW_DISABLE_TELEMETRY=true
/tmp/venv/bin/mle-stream bench --json > "$out.json" 2> "$out.err" &
bench=$!
while kill -0 $bench 2>/dev/null; do
  pid=$(pgrep -P $bench -f spawn_main 2>/dev/null | head -1)
  [ -n "$pid" ] && break
  sleep 0.05
done
echo "worker pid $pid at $(cat /proc/uptime)" >&2
/tmp/venv/bin/py-spy record --pid "$pid" "$@" > "$out.spy.log" 2>&1
wait $bench

"""Interleaved `mle-stream bench --json` runs of several configurations (environment variables),
so that the noise of a shared 2-core VM hits them alike.

usage: scripts/bench_ab.py ROUNDS NAME=VAR=VALUE,VAR=VALUE [NAME=...] ...   (NAME= alone: no extra env)
       NAME=@DIR[,VAR=VALUE...] runs `python -m mle_stream bench` with DIR as the working directory, i.e. the
       mle_stream package copied into DIR (with schemas/): a before/after of code, not settings.
"""
import json
import os
import subprocess
import sys

rounds = int(sys.argv[1])
configs = []
for spec in sys.argv[2:]:
    name, _, rest = spec.partition("=")
    env = dict(("@cwd", kv[1:]) if kv.startswith("@") else kv.split("=", 1) for kv in rest.split(",") if kv)
    configs.append((name, env))
results = {name: [] for name, _ in configs}
for r in range(rounds):
    for name, env in configs:
        load = os.getloadavg()[0]
        cwd = env.get("@cwd")
        command = ["/tmp/venv/bin/python", "-m", "mle_stream"] if cwd else ["/tmp/venv/bin/mle-stream"]
        extra = {k: v for k, v in env.items() if k != "@cwd"}
        out = subprocess.run([*command, "bench", "--json"], capture_output=True, text=True, cwd=cwd,
                             env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **extra})
        if out.returncode:
            print(name, "FAILED", out.stderr[-2000:], flush=True)
            continue
        rep = json.loads(out.stdout)
        w = rep["worker"]
        row = (rep["events_per_s"], rep["baseline_events_per_s"], rep["ratio"], w["cpu_s"], w["seconds"], w["batches"])
        results[name].append(row)
        trace = [l for l in out.stderr.splitlines() if "TRACE CPU" in l]
        print(f"round {r} {name:12s} load {load:.2f} events/s {row[0]:9.0f} floor {row[1]:9.0f} ratio {row[2]:.3f} "
              f"cpu_s {row[3]} seconds {row[4]} batches {row[5]} {trace[0][trace[0].index('CPU'):] if trace else ''}",
              flush=True)
for name, rows in results.items():
    if rows:
        ev = sorted(x[0] for x in rows)
        print(f"{name:12s} events/s median {ev[len(ev)//2]:.0f} all {[round(x[0]) for x in rows]} ratios "
              f"{[round(x[2], 3) for x in rows]}")

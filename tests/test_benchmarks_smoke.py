"""The scripts in benchmarks/ still run against the current code: each one's smallest run, or its
--help where the smallest run needs a broker or minutes. All at once, in a few seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"

# script -> (arguments, what its output must contain)
RUNS = {
    "bench_confluent_decode.py": (["0.01"], "Confluent, evolved writer schema"),
    "bench_join.py": (["--events", "2000", "--batches", "500", "--runs", "1", "--json"], None),
    "measure_catch_up.py": (["--help"], "benchmarks/measure_catch_up.py"),
    "measure_checkpoint.py": (["--help"], "benchmarks/measure_checkpoint.py"),
    "measure_estimates.py": (["--windows", "8", "--per-window", "400", "--reference-labels", "400", "--events", "4000",
                              "--runs", "1"], "with estimates"),
    "measure_without_faust.py": (["--help"], "benchmarks/measure_without_faust.py"),
    "simulate_checks.py": (["--help"], "benchmarks/simulate_checks.py"),
    "measure_sequential_checks.py": (["--runs", "2", "--windows", "3"], "coverage misses"),
    "bench-drift-env": (["--help"], "benchmarks/bench-drift-env [DIR]"),
}


def test_every_benchmark_is_smoke_tested() -> None:
    assert sorted(p.name for p in BENCHMARKS.iterdir() if p.name != "README.md") == sorted(RUNS)
    readme = (BENCHMARKS / "README.md").read_text()
    assert [name for name in RUNS if f"`{name}`" not in readme] == []


def test_each_benchmark_runs() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    processes = {}
    for name, (args, _) in RUNS.items():
        command = [sys.executable if name.endswith(".py") else "bash", str(BENCHMARKS / name)]
        processes[name] = subprocess.Popen([*command, *args], cwd=REPO, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name, process in processes.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"{name}: {err[-2000:]}"
        expected = RUNS[name][1]
        if expected is None:
            results = json.loads(out)  # bench_join.py --json: one entry per join measured
            assert {r["join"] for r in results} == {"label_join", "column_join"}, out
            assert all(r["events"] == r["held"] == 2000 for r in results), out
        else:
            assert expected in out, f"{name}: {out[-2000:]}"

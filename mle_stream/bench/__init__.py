"""The benchmarks behind `mle-stream bench`: the worker's throughput and memory (throughput.py), rollback
decisions (decisions.py), the drift table against Evidently (drift.py, drift_evidently.py).

Only the bench subcommands import these modules, and only when they run: the worker's, the actuator's and
the status page's start-up never loads them."""

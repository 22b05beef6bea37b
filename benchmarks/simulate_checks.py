"""How often common checks roll back a candidate as good as the baseline, by `mle-stream validate
--simulate` with many runs (docs/simulate.md, "Measured"): a relative AUC limit re-checked every
window, a fixed error-rate limit at the baseline's own rate, and the sequential error-rate test.

    PYTHONPATH=. python benchmarks/simulate_checks.py [--runs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mle_stream.cli.main import main

TOPOLOGY = """\
model: {name}
task: binary
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 5m, grace: 1m, retention: 1h}}
checks:
  - name: {name}
{check}
"""
# check -> (its YAML, the flags that state the baseline and the degradation to catch)
CHECKS = {
    "auc-vs-baseline": ("    metric: roc_auc\n    max_degradation: 0.01\n    min_samples: 100\n    consecutive: 3",
                        ["--degrade", "roc_auc=-0.02"]),  # the baseline's AUC: the generator's 0.856
    "fixed-error-rate": ("    metric: error_rate\n    max: 0.02\n    min_samples: 100\n    consecutive: 3",
                         ["--baseline", "error_rate=0.02", "--degrade", "error_rate=2x"]),
    "sequential-error-rate": ("    metric: error_rate\n    sequential: {alpha: 0.01}",
                              ["--baseline", "error_rate=0.02", "--degrade", "error_rate=2x"]),
}
# A canary at 10% of 5 predictions/s (150 candidate predictions per 5-minute window), labels
# within a minute, 24 windows (2 hours).
FLAGS = ["--traffic", "5/s", "--share", "10%", "--label-delay", "1s..1m", "--unlabeled", "0%", "--windows", "24",
         "--alpha", "0.05"]


def run(runs: int) -> int:
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (check, flags) in CHECKS.items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(TOPOLOGY.format(name=name, check=check))
            started = time.monotonic()
            worst = max(worst, main(["validate", "--simulate", "--runs", str(runs), *FLAGS, *flags, str(path)]))
            print(f"# {name}: {runs} runs per case in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="simulated rollouts per check and case (default 400)")
    sys.exit(run(parser.parse_args().runs))

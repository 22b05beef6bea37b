"""The Evidently side of `mle-stream bench drift`, run by the bench-only venv's python as a script.

    <evidently-venv>/bin/python drift_evidently.py DATA_DIR

DATA_DIR holds what the bench wrote: reference.npy and current.npy (float64, rows x features) and
columns.json (the feature names). Prints one JSON object on stdout:

    {"versions": {"evidently", "pandas", "numpy", "scipy", "python"},
     "forced": {"seconds", "values": {"psi": {column: value}, "wasserstein": {column: value}}},
     "default": {"seconds", "values": {column: {"method": ..., "value": ...}}},
     "peak_rss_mb"}

"forced" is one Report with two DataDriftPresets, one with method="psi" and one with
method="wasserstein", so that every column gets both statistics the bench compares; "default" is
DataDriftPreset() as users run it (normed Wasserstein for numeric columns above 1000 rows). Only
Report.run() is timed: the files are read and the DataFrames built before the clock starts.

This file must import nothing from mle_stream: that venv has Evidently, pandas and numpy only
(Evidently is never a dependency of mle-stream). Evidently is imported inside main() so that
importing this module from the project's own environment (linters, tests) does not need it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _value_drifts(snapshot: Any) -> list[tuple[str, str, float]]:
    """(column, method, value) of every ValueDrift metric of a snapshot."""
    out = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith("ValueDrift"):
            out.append((str(config["column"]), str(config["method"]), float(metric["value"])))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: drift_evidently.py DATA_DIR", file=sys.stderr)
        return 2
    # Evidently reports usage unless DO_NOT_TRACK is set; a bench must not phone home.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import evidently
    import numpy as np
    import pandas as pd
    import scipy
    from evidently import Report
    from evidently.presets import DataDriftPreset

    data = Path(argv[0])
    columns = json.loads((data / "columns.json").read_text())
    reference = pd.DataFrame(np.load(data / "reference.npy"), columns=columns)
    current = pd.DataFrame(np.load(data / "current.npy"), columns=columns)

    start = time.perf_counter()
    forced = Report([DataDriftPreset(method="psi"), DataDriftPreset(method="wasserstein")]).run(current, reference)
    forced_s = time.perf_counter() - start
    values: dict[str, dict[str, float]] = {"psi": {}, "wasserstein": {}}
    for column, method, value in _value_drifts(forced):
        values.setdefault(method, {})[column] = value

    start = time.perf_counter()
    default = Report([DataDriftPreset()]).run(current, reference)
    default_s = time.perf_counter() - start
    default_values = {column: {"method": method, "value": value} for column, method, value in _value_drifts(default)}

    print(json.dumps({
        "versions": {"evidently": evidently.__version__, "pandas": pd.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
        "forced": {"seconds": forced_s, "values": values},
        "default": {"seconds": default_s, "values": default_values},
        # ru_maxrss is in KiB on Linux: the whole process, frames and both reports included.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

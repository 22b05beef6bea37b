#!/usr/bin/env python
"""False rollbacks and power of the sequential roc_auc and tail-latency checks (docs/decisions.md).

    python benchmarks/sequential_auc_tail.py [--runs 1000] [--windows 60] [--seed 1] [--json]

Each run is one rollout of `--windows` closed windows, the test looked at after every window:

- roc_auc: per window `--labeled` labeled predictions per version, 20% positives, binormal scores
  (negatives N(0, 1), positives N(mu, 1) on the logit, AUC = Phi(mu / sqrt 2)); the baseline's AUC
  is 0.80. A/A: the candidate's too; the null's edge: 0.79 (exactly the margin below, the hardest
  case that must not roll back more than alpha); power: 0.78 (a drop of 0.02). The
  sequential check (AucTest: alpha 0.01, margin 0.01, min_samples 100 a class) next to the fixed
  check of the A/B example (the candidate's AUC more than 0.01 below the baseline's in 3 windows
  in a row).
- tail latency: per window `--requests` requests per version, lognormal latencies (median 50 ms,
  sigma 0.5) in each version's LatencySketch; the p99 check (ErrorRateTest on the requests above
  the pooled p99: alpha 0.01, min_relative_increase 0.1). A/A, and power with every candidate
  latency 20% higher (p99 +20%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mle_stream.core.latency_sketch import LatencySketch  # noqa: E402
from mle_stream.core.sequential import ErrorRateTest  # noqa: E402
from mle_stream.core.sequential_auc import AucTest, auc_window  # noqa: E402
from mle_stream.core.sequential_tail import tail_counts  # noqa: E402
from mle_stream.core.verdict import Verdict  # noqa: E402


def scores_histogram(rng: np.random.Generator, n: int, auc: float) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) per distinct score, in rising score order, of n labeled predictions."""
    y = rng.random(n) < 0.2
    logit = rng.normal(0.0, 1.0, n) + y * math.sqrt(2.0) * norm.ppf(auc)
    order = np.argsort(logit, kind="stable")
    return y[order].astype(np.int64), (~y[order]).astype(np.int64)


def auc_rollout(rng: np.random.Generator, windows: int, labeled: int, candidate_auc: float) -> dict[str, int | None]:
    """The window (1-based) at which each check first rolls back, None if never."""
    test = AucTest(alpha=0.01, min_difference=0.01, min_samples=100)
    fired: dict[str, int | None] = {"sequential": None, "fixed": None}
    streak = 0
    for t in range(1, windows + 1):
        window = auc_window(scores_histogram(rng, labeled, candidate_auc), scores_histogram(rng, labeled, 0.80))
        assert window is not None
        test.update(window)
        if fired["sequential"] is None and test.decide().verdict is Verdict.FAIL:
            fired["sequential"] = t
        streak = streak + 1 if window.shortfall > 0.01 else 0
        if fired["fixed"] is None and streak >= 3:
            fired["fixed"] = t
    return fired


def tail_rollout(rng: np.random.Generator, windows: int, requests: int, slower: float) -> int | None:
    test = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, min_samples=100)
    for t in range(1, windows + 1):
        candidate, baseline = LatencySketch(), LatencySketch()
        candidate.add_many(slower * rng.lognormal(math.log(50.0), 0.5, requests))
        baseline.add_many(rng.lognormal(math.log(50.0), 0.5, requests))
        counts = tail_counts(candidate, baseline, 0.99)
        assert counts is not None
        test.update(counts.candidate_n, counts.candidate_above, counts.baseline_n, counts.baseline_above)
        if test.decide().verdict is Verdict.FAIL:
            return t
    return None


def rates(fired: list[int | None]) -> dict[str, Any]:
    hits = sorted(t for t in fired if t is not None)
    return {"rate": len(hits) / len(fired), "rollbacks": len(hits), "runs": len(fired),
            "median_window": None if not hits else float(np.median(hits))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--labeled", type=int, default=2000, help="labeled predictions per version and window")
    parser.add_argument("--requests", type=int, default=2000, help="requests per version and window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    aa = [auc_rollout(rng, args.windows, args.labeled, 0.80) for _ in range(args.runs)]
    edge = [auc_rollout(rng, args.windows, args.labeled, 0.79) for _ in range(args.runs)]
    worse = [auc_rollout(rng, args.windows, args.labeled, 0.78) for _ in range(args.runs)]
    result = {
        "settings": vars(args),
        "roc_auc": {"a/a sequential": rates([r["sequential"] for r in aa]),
                    "a/a fixed (0.01, 3 in a row)": rates([r["fixed"] for r in aa]),
                    "0.01 below sequential": rates([r["sequential"] for r in edge]),
                    "drop 0.02 sequential": rates([r["sequential"] for r in worse]),
                    "drop 0.02 fixed (0.01, 3 in a row)": rates([r["fixed"] for r in worse])},
        "latency_p99_ms": {"a/a sequential": rates([tail_rollout(rng, args.windows, args.requests, 1.0)
                                                    for _ in range(args.runs)]),
                           "+20% sequential": rates([tail_rollout(rng, args.windows, args.requests, 1.2)
                                                     for _ in range(args.runs)])},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.runs} rollouts of {args.windows} windows each, seed {args.seed} ({result['seconds']} s)")
    for metric in ("roc_auc", "latency_p99_ms"):
        for case, r in result[metric].items():
            print(f"{metric:<15} {case:<36} rolled back {r['rollbacks']:>5}/{r['runs']} = {r['rate']:.4f}"
                  f"  median window {r['median_window']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

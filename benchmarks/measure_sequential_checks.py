"""Confidence-bound coverage of the sequential checks, per metric, through the checks' own path.

False rollbacks, power and delay of every family are `mle-stream bench decisions` (vectorised, next to
a fixed threshold and the oracle CUSUM); this script adds what that bench does not measure: whether
the anytime-valid lower bound covers the true effect, with every window judged by judge_check as the
worker judges it (the traffic: mle_stream/bench/decisions.py's generators).

Each rollout draws raw predictions and labels window by window, updates the task's metric state per
version, and judges the window with the check (core/checks.py: judge_check, the worker's own path,
the test state carried from window to window), looking after every window. Per metric, over
--runs rollouts of an equal candidate (A/A) and of a degraded one:

- false rollbacks: share of A/A rollouts that FAIL at any look (the promise: at most alpha);
- coverage misses: share of A/A rollouts whose anytime-valid lower bound ever passes the true
  effect (rate ratio 1; for means theta = mu - rho0 mu = -min_relative_increase x mu, with mu
  from 2 million draws);
- power: share of degraded rollouts that FAIL within --windows windows, and the median window
  of the first FAIL among them.

Traffic: 1000 predictions a window, 20% to the candidate. Binary: 30% positives, baseline recall
0.8 and false-positive rate 0.05. Regression: errors Student-t(5). Run from the repository root:

    PYTHONPATH=. python benchmarks/measure_sequential_checks.py [--runs N] [--windows N] [--seed N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mle_stream.bench.decisions import binary_draw, student_t_draw
from mle_stream.core.checks import CheckRule, SequentialSpec, judge_check
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes, RegressionOutcomes
from mle_stream.core.metrics.regression import RegressionMetrics
from mle_stream.core.sequential import MeanTest
from mle_stream.core.verdict import Verdict

ALPHA = 0.01
PER_WINDOW, SHARE = 1000, 0.2

Side = Callable[[np.random.Generator, int, bool], dict[str, Any]]


def binary_side(fpr: float = 0.05, tpr: float = 0.8, noise: float = 0.1) -> Side:
    draw = binary_draw(fpr, tpr, noise)

    def side(rng: np.random.Generator, n: int, worse: bool) -> dict[str, Any]:
        v = draw(rng, (n,), worse)
        state = BinaryMetrics()
        state.update(BinaryOutcomes(v["y"], v["score"], v["predicted"]))
        return {**state.values(), "labeled": state.count}
    return side


def regression_side(scale: float) -> Side:
    draw = student_t_draw(scale)

    def side(rng: np.random.Generator, n: int, worse: bool) -> dict[str, Any]:
        y = rng.normal(100, 10, n)
        state = RegressionMetrics()
        state.update(RegressionOutcomes(y, y + draw(rng, (n,), worse)["error"]))
        return {**state.values(), "labeled": state.count}
    return side


def _brier_terms(rng: np.random.Generator, n: int) -> np.ndarray:
    v = binary_draw()(rng, (n,), False)
    return np.asarray((v["score"] - v["y"]) ** 2)


# metric -> (how a side is drawn, what the degradation is, the A/A mean of the per-prediction values)
FAMILIES: dict[str, tuple[Side, str, Callable[[np.random.Generator], float] | None]] = {
    "accuracy": (binary_side(fpr=0.08, tpr=0.75), "false-positive rate 0.05 -> 0.08, recall 0.8 -> 0.75 "
                 "(errors x 1.38)", None),
    "precision": (binary_side(fpr=0.08), "false-positive rate 0.05 -> 0.08 (precision 0.87 -> 0.81)", None),
    "recall": (binary_side(tpr=0.72), "recall 0.8 -> 0.72 (misses x 1.4)", None),
    "brier_score": (binary_side(noise=0.18), "score noise 0.1 -> 0.18",
                    lambda rng: float(_brier_terms(rng, 2_000_000).mean())),
    "mae": (regression_side(1.15), "errors x 1.15", lambda rng: float(np.abs(rng.standard_t(5, 2_000_000)).mean())),
    "rmse": (regression_side(1.15), "errors x 1.15 (MSE x 1.32)",
             lambda rng: float((rng.standard_t(5, 2_000_000) ** 2).mean())),
}


def rollout(metric: str, side: Side, worse: bool, windows: int, rng: np.random.Generator,
            true_effect: float) -> tuple[int | None, bool]:
    """(the window of the first FAIL or None, whether the lower bound ever passed the true effect)."""
    rule = CheckRule("s", metric, "higher", min_samples=100, consecutive=1, sequential=SequentialSpec(alpha=ALPHA))
    state, missed = None, False
    for w in range(windows):
        n_c = int(rng.binomial(PER_WINDOW, SHARE))
        candidate, baseline = side(rng, n_c, worse), side(rng, PER_WINDOW - n_c, False)
        result = judge_check(rule, baseline, candidate, test_state=state)
        state = result.test_state
        assert result.test is not None
        lower = result.test["confidence_interval"][0]
        missed |= lower is not None and lower > true_effect
        if result.verdict is Verdict.FAIL:
            return w + 1, missed
    return None, missed


def measure(runs: int, windows: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for metric, (side, degradation, mean_of) in FAMILIES.items():
        rng = np.random.default_rng([seed, len(out)])
        # A/A: the rate ratio is 1; a mean's theta = mu_c - rho0 mu_b = -min_relative_increase x mu.
        true_effect = 1.0 if mean_of is None else -MeanTest().min_relative_increase * mean_of(rng)
        started = time.perf_counter()
        aa = [rollout(metric, side, False, windows, rng, true_effect) for _ in range(runs)]
        bad = [rollout(metric, side, True, windows, rng, np.inf)[0] for _ in range(runs)]
        fired = [w for w in bad if w is not None]
        out.append({"metric": metric, "degradation": degradation, "runs": runs, "windows": windows,
                    "alpha": ALPHA, "false_rollback_rate": sum(w is not None for w, _ in aa) / runs,
                    "coverage_miss_rate": sum(m for _, m in aa) / runs, "power": len(fired) / runs,
                    "median_windows_to_rollback": float(np.median(fired)) if fired else None,
                    "seconds": round(time.perf_counter() - started, 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/measure_sequential_checks.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per metric and scenario (default 1000)")
    parser.add_argument("--windows", type=int, default=30, help="windows per rollout (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.windows < 1:
        parser.error("--runs and --windows must be >= 1")
    results = measure(args.runs, args.windows, args.seed)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"alpha {ALPHA}, {args.runs} rollouts of {args.windows} windows per row and scenario, "
          f"{PER_WINDOW} predictions a window, {SHARE:.0%} to the candidate")
    print(f"{'metric':<12} {'false rollbacks':>15} {'coverage misses':>15} {'power':>6} {'median windows':>14}  "
          "degradation")
    for r in results:
        median = "-" if r["median_windows_to_rollback"] is None else f"{r['median_windows_to_rollback']:g}"
        print(f"{r['metric']:<12} {r['false_rollback_rate']:>15.4f} {r['coverage_miss_rate']:>15.4f} "
              f"{r['power']:>6.3f} {median:>14}  {r['degradation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sequential tail-latency check (core/sequential_tail.py, ErrorRateTest on the requests above
the pooled quantile) against independent truth.

- the window's counts against numpy on the raw latencies: the threshold is the pooled quantile's
  bucket edge, within the sketch's accuracy of numpy's pooled quantile, and the counts above it are
  numpy's exact counts;
- A/A rollouts looked at after every window (a small canary, where a normal approximation would
  break) roll back at most alpha of the time; a candidate 20% slower is rolled back;
- through the policy: a p99 check with `sequential` reads both versions' sketches, and its evidence
  says the threshold, the candidate's share above it and the share expected.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mle_stream.core.events import CommandKind
from mle_stream.core.latency_sketch import LatencySketch
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from mle_stream.core.policy import PolicyState, decide, judge
from mle_stream.core.sequential import ErrorRateTest
from mle_stream.core.sequential_tail import tail_counts
from mle_stream.core.topology import parse_topology
from mle_stream.core.verdict import Verdict
from mle_stream.core.window_state import WindowState
from mle_stream.errors import ConfigError


def sketch(values: np.ndarray) -> LatencySketch:
    s = LatencySketch()
    s.add_many(values)
    return s


@pytest.mark.parametrize("quantile", [0.95, 0.99])
def test_the_counts_above_the_pooled_quantile_equal_numpys(quantile: float) -> None:
    rng = np.random.default_rng(int(quantile * 100))
    c, b = rng.lognormal(math.log(60), 0.6, 700), rng.lognormal(math.log(50), 0.5, 5000)
    counts = tail_counts(sketch(c), sketch(b), quantile)
    assert counts is not None
    pooled = np.concatenate([c, b])
    # The edge of the bucket holding the pooled quantile: within one bucket (2% at accuracy 0.01) above numpy's.
    exact = np.quantile(pooled, quantile, method="lower")
    assert exact <= counts.threshold_ms <= exact * 1.0202
    assert (counts.candidate_n, counts.baseline_n) == (len(c), len(b))
    assert counts.candidate_above == int((c > counts.threshold_ms).sum())
    assert counts.baseline_above == int((b > counts.threshold_ms).sum())
    assert counts.candidate_above + counts.baseline_above <= (1 - quantile) * len(pooled)
    # A symmetric function of the pooled sample: swapping the versions swaps the counts.
    swapped = tail_counts(sketch(b), sketch(c), quantile)
    assert swapped is not None and (swapped.threshold_ms, swapped.candidate_above) == (counts.threshold_ms,
                                                                                       counts.baseline_above)
    assert tail_counts(LatencySketch(), LatencySketch(), quantile) is None


def rollout(rng: np.random.Generator, windows: int, slower: float, alpha: float) -> int | None:
    test = ErrorRateTest(alpha=alpha, min_relative_increase=0.0, min_samples=20)
    for t in range(windows):
        n_c = int(rng.integers(20, 60))  # a small canary next to a large baseline: few requests in the tail
        counts = tail_counts(sketch(slower * rng.lognormal(3.5, 0.7, n_c)), sketch(rng.lognormal(3.5, 0.7, 900)), 0.99)
        assert counts is not None
        test.update(counts.candidate_n, counts.candidate_above, counts.baseline_n, counts.baseline_above)
        if test.decide().verdict is Verdict.FAIL:
            return t
    return None


def test_equal_latencies_are_rarely_rolled_back_and_a_slower_candidate_is() -> None:
    rng = np.random.default_rng(3)
    # Exact at min_relative_increase 0 (the candidate's count above T given the count is
    # hypergeometric): alpha = 0.1 over 200 rollouts of 30 windows allows 20.
    assert sum(rollout(rng, 30, 1.0, alpha=0.1) is not None for _ in range(200)) <= 20
    slow = [rollout(rng, 30, 1.5, alpha=0.01) for _ in range(20)]  # +50%: with ~40 canary requests a window
    assert sum(t is not None for t in slow) >= 16


TOPOLOGY = """\
model: m
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 10s, grace: 0s}
checks:
  - name: p99
    metric: latency_p99_ms
    min_samples: 200
    sequential: {alpha: 0.01, min_relative_increase: 0.1}
"""


def served(rng: np.random.Generator, topology, n: int, slower: float) -> tuple[WindowState, np.ndarray]:
    state = WindowState.for_topology(topology)
    latency = slower * rng.lognormal(math.log(50), 0.5, n)
    state.serve(latency, np.zeros(n, dtype=bool))
    state.score(BinaryOutcomes(np.ones(3, dtype=bool), np.full(3, 0.9), np.ones(3, dtype=bool)))
    return state, latency


@pytest.mark.parametrize("slower", [1.0, 1.2])  # A/A, and p99 latency +20%
def test_a_sequential_p99_check_decides_as_the_test_fed_numpys_counts(slower: float) -> None:
    topology = parse_topology(TOPOLOGY)
    rng = np.random.default_rng(4)
    reference = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, min_samples=200)
    state, verdicts, commands = PolicyState(), [], []
    for i in range(30):
        (base, b_lat), (cand, c_lat) = served(rng, topology, 2000, 1.0), served(rng, topology, 500, slower)
        judgement = judge(topology, i * 10_000, base, cand, state)
        evidence = judgement.check("p99").test
        assert evidence is not None
        threshold = evidence["tail"]["threshold_ms"]
        reference.update(len(c_lat), int((c_lat > threshold).sum()), len(b_lat), int((b_lat > threshold).sum()))
        assert judgement.check("p99").verdict is reference.decide().verdict
        state, out = decide(topology, state, judgement, now_ms=1)
        state = PolicyState.restore(json.loads(json.dumps(state.snapshot())))
        verdicts.append(judgement.verdict)
        commands += out
        if state.rolled_back:
            break
    if slower == 1.0:
        assert commands == [] and Verdict.FAIL not in verdicts
    else:
        (rollback,) = commands
        assert rollback.kind is CommandKind.ROLLBACK and len(verdicts) <= 10
        last = json.loads(rollback.evidence)["windows"][-1]["checks"][0]["sequential"]
        assert last["log_likelihood_ratio"] == pytest.approx(reference.log_likelihood_ratio(), rel=1e-12)
        assert last["tail"]["quantile"] == 0.99 and last["tail"]["candidate_share"] > 2 * last["tail"]["expected_share"]
        assert last["candidate"]["above"] == reference.candidate_errors
        assert "above the pooled p99" in rollback.reason


def test_sequential_is_accepted_on_the_latency_quantiles_only() -> None:
    head = TOPOLOGY.split("checks:")[0] + "checks:\n"
    for metric in ("latency_p95_ms", "latency_p99_ms"):
        (rule,) = parse_topology(head + f"  - {{name: t, metric: {metric}, sequential: {{}}}}\n").checks
        assert isinstance(rule.sequential.new_test(metric, 100), ErrorRateTest)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"checks\[0\]\.sequential: is for .*latency_p99_ms.*, not latency_p50_ms"):
        parse_topology(head + "  - {name: t, metric: latency_p50_ms, sequential: {}}\n")

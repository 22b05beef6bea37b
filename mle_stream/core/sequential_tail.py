"""The per-window counts of a sequential test on tail latency (p95, p99).

A quantile of each version cannot be compared with a test that stays exact over many looks, but a
count can: per closed window, T is the pooled (both versions') q-quantile, and a request is "in
the tail" when its latency is above T. T is a symmetric function of the pooled sample, so if both
versions' latencies come from the same distribution the requests are exchangeable given the
pooled sample: of the k requests above T, the candidate's x_c is hypergeometric given k, exactly
the conditional law `ErrorRateTest` (core/sequential.py) is built on, with "error" = "above T".
The test then FAILs when the candidate's share above T exceeds the baseline's by more than its
`min_relative_increase`.

With the versions' latency sketches (core/latency_sketch.py) T is the upper edge of the pooled
sketch's bucket that holds the q-quantile: still a function of the pooled sample, and the counts
above it are exact (whole buckets), so the sketch's error changes which T is used, not the
validity.
"""

from __future__ import annotations

from dataclasses import dataclass

from mle_stream.core.latency_sketch import LatencySketch


@dataclass(frozen=True)
class TailCounts:
    """One window's requests above the pooled quantile's bucket edge, per version."""

    quantile: float
    threshold_ms: float  # T: a request is in the tail when its latency is above it
    candidate_n: int
    candidate_above: int
    baseline_n: int
    baseline_above: int


def tail_counts(candidate: LatencySketch, baseline: LatencySketch, quantile: float) -> TailCounts | None:
    """The counts above the pooled `quantile`'s bucket edge; None when neither version reported a latency."""
    pooled = candidate.merge(baseline)
    at = pooled.quantile(quantile)
    if at is None:
        return None
    return TailCounts(quantile, pooled.bucket_upper_edge(at), candidate.count, candidate.count_above(at),
                      baseline.count, baseline.count_above(at))

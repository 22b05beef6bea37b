"""`mle-stream bench` as users run it, small, over the session broker: counts, never times."""

from __future__ import annotations

import json

import pytest

from mle_stream.bench.throughput import (
    FLOOR_RUNS,
    format_memory_report,
    format_report,
    memory_report,
    steady_state_events,
)
from mle_stream.cli import main

pytestmark = pytest.mark.broker

EVENTS = 5_000


def test_bench_json_counts_every_prediction_end_to_end(kafka_bootstrap: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "--events", str(EVENTS), "--models", "2", "--json", "--bootstrap", kafka_bootstrap])
    out = capsys.readouterr().out
    assert status == 0
    r = json.loads(out)  # stdout holds the report and nothing else

    assert {"events_per_s", "baseline_events_per_s", "ratio", "peak_rss_mb", "startup_s"} <= r.keys()
    assert r["ratio"] == r["events_per_s"] / r["baseline_events_per_s"]
    assert r["events_per_s"] > 0 and r["baseline_events_per_s"] > 0 and r["peak_rss_mb"] > 0

    labels = r["labels"]
    assert 0.85 * EVENTS < labels < 0.95 * EVENTS  # labels for ~90% of the predictions
    produced = r["produce"]["prediction_messages"] + r["produce"]["label_messages"]
    # Both legs read every message and every record (counted, not taken from the high watermark).
    for leg in (r["worker"], r["baseline"]):
        assert (leg["predictions"], leg["labels"], leg["messages"]) == (EVENTS, labels, produced)
    assert r["worker"]["dead_letters"] == 0
    # The floor runs several times over the same messages and the fastest run counts.
    runs = r["baseline"]["runs_seconds"]
    assert len(runs) == FLOOR_RUNS and r["baseline"]["seconds"] == min(runs)

    # The closed windows the worker published cover every prediction exactly once; the window
    # closers sent after the measured interval are in windows that never close.
    assert r["snapshots"]["predictions"] == EVENTS and r["snapshots"]["duplicates"] == 0
    assert r["snapshots"]["worker_predictions_with_closers"] == EVENTS + r["models"]
    assert 0 < r["snapshots"]["labeled"] <= labels

    # rss_growth: the worker's RSS at a tenth of the predictions and at all of them.
    m = r["memory"]
    growth = round((m["rss_at_end_mb"] - m["rss_at_tenth_mb"]) / m["rss_at_tenth_mb"], 4)
    assert r["rss_growth"] == m["rss_growth"] == growth
    assert EVENTS // 10 <= m["events_at_tenth"] <= EVENTS == m["events_at_end"]
    assert 0 < m["rss_at_tenth_mb"] <= r["peak_rss_mb"] and 0 < m["rss_at_end_mb"] <= r["peak_rss_mb"]

    table = format_report(r)
    assert "worker (Faust)" in table and "floor (raw consumer)" in table and f"{EVENTS:,}" in table
    assert f"the fastest of {FLOOR_RUNS} runs" in table
    assert "rss_growth" in table


def test_bench_memory_json_measures_the_worker_while_the_bench_produces(kafka_bootstrap: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "memory", "--events", str(EVENTS), "--json", "--bootstrap", kafka_bootstrap])
    r = json.loads(capsys.readouterr().out)
    assert status == 0
    assert {"rss_growth", "rss_at_tenth_mb", "rss_at_end_mb", "events_at_tenth", "events_at_end"} <= r.keys()
    assert r["rss_growth"] == round((r["rss_at_end_mb"] - r["rss_at_tenth_mb"]) / r["rss_at_tenth_mb"], 4)
    # (a run this small is all produced before the worker has joined: one batch may take it all)
    assert EVENTS // 10 <= r["events_at_tenth"] <= EVENTS == r["events_at_end"]
    # The worker read everything the bench produced, and its closed windows count every prediction once.
    assert (r["worker"]["predictions"], r["worker"]["labels"]) == (EVENTS, r["labels"])
    assert r["snapshots"]["predictions"] == EVENTS and r["snapshots"]["duplicates"] == 0
    assert "rss_growth" in format_memory_report(r)


def test_rss_growth_is_relative_to_the_rss_at_a_tenth_and_says_whether_the_state_was_still_growing() -> None:
    measured = {"rss_tenth_mb": 200.0, "rss_end_mb": 212.0, "tenth_predictions": 1_000_400, "predictions": 10_000_000}
    m = memory_report(10_000_000, measured)
    assert (m["rss_growth"], m["rss_at_tenth_mb"], m["rss_at_end_mb"]) == (0.06, 200.0, 212.0)
    assert (m["events_at_tenth"], m["events_at_end"]) == (1_000_400, 10_000_000)
    # The bench's traffic covers 1 s of event time per 2,000 predictions; its topology holds
    # nothing longer than a minute of event time, so a 10M run is long past its warm-up at 1M ...
    assert steady_state_events(10_000_000) < 60 * 2_000 and not m["warm_up_included"]
    # ... and a run whose tenth comes before the steady state says so.
    small = memory_report(20_000, {**measured, "tenth_predictions": 2_000, "predictions": 20_000})
    assert small["warm_up_included"] and steady_state_events(20_000) > 2_000
    assert memory_report(10, {**measured, "rss_tenth_mb": None})["rss_growth"] is None

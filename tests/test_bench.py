"""`mle-stream bench` as users run it, small, over the session broker: counts, never times."""

from __future__ import annotations

import json

import pytest

from mle_stream.bench import format_report
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

    # The closed windows the worker published cover every prediction exactly once; the window
    # closers sent after the measured interval are in windows that never close.
    assert r["snapshots"]["predictions"] == EVENTS and r["snapshots"]["duplicates"] == 0
    assert r["snapshots"]["worker_predictions_with_closers"] == EVENTS + r["models"]
    assert 0 < r["snapshots"]["labeled"] <= labels

    table = format_report(r)
    assert "worker (Faust)" in table and "floor (raw consumer)" in table and f"{EVENTS:,}" in table

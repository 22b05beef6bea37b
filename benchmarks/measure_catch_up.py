#!/usr/bin/env python
"""Catch-up (docs/catch-up.md, "Measured"): one `mle-stream worker` process, not pinned, started on
a 2-hour backlog of tests/test_catch_up.py's traffic (2 models, RATE predictions per second of
event time each, 500 to a message; labels 1-20 s later, 1-4 to a message) on a new embedded broker.

    PYTHONPATH=$PWD:$PWD/tests python benchmarks/measure_catch_up.py [RATE, default 20]

Prints one JSON object: events (predictions + labels) and messages, catch_up_s (from the worker's
"reading from" to the last input message processed, by its mle_stream_input_messages_total),
events_per_s, the worker's peak RSS and samples of it (VmRSS), seconds from process start to the
first judged window and to the first command, and the peaks of mle_stream_input_paused and
mle_stream_deferred_rows. CHECKPOINT=30s (the default) sets MLE_CHECKPOINT_INTERVAL."""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, "tests")
import test_catch_up as t  # noqa: E402 (after the path)
from mle_stream.broker import EmbeddedBroker
from mle_stream.config import Topics
from mle_stream.kafka import ensure_topics

if {"-h", "--help"} & set(sys.argv[1:]):
    print(__doc__)
    sys.exit(0)
rate = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    prefix = f"m{uuid.uuid4().hex[:6]}."
    topics = Topics(**{n: prefix + d for n, d in Topics().__dict__.items()})
    ensure_topics(broker.bootstrap_servers, topics.all(), partitions=2)
    rng = random.Random(1)
    base = (int(time.time() * 1000) - 9_000_000) // t.SIZE_MS * t.SIZE_MS
    preds, labels = t.generate(base, base + t.BACKLOG_MS, rate, rng, bad_from=t.BAD_FROM)
    backlog = t.messages(preds, labels, rng)
    started = time.monotonic()
    ends = t.produce(broker.bootstrap_servers, topics, backlog)
    produce_s = time.monotonic() - started
    total_msgs = sum(ends.values())
    port = t.free_port()
    env = t.worker_env(broker.bootstrap_servers, topics, port, f"measure-{uuid.uuid4().hex[:6]}")
    env["MLE_CHECKPOINT_INTERVAL"] = os.environ.get("CHECKPOINT", "30s")
    folder = t.write_topologies(tmp)
    log = tmp / "worker.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mle_stream", "--log-level", "info", "worker", "--topology",
                                 str(folder)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    peaks: dict = {}
    rss, reading_at, done_at, first_judged, first_command = [], None, None, None, None
    try:
        while time.monotonic() - t0 < 600:
            text = log.read_text(errors="replace")
            now = time.monotonic() - t0
            try:
                kb = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1))
                rss.append((round(now, 1), kb // 1024))
            except (OSError, AttributeError):
                pass
            if reading_at is None and "reading from " in text:
                reading_at = now
            if first_judged is None and re.search(r"window \d+\.\.\d+: (PASS|FAIL|INCONCLUSIVE|ERROR)", text):
                first_judged = now
            if first_command is None and re.search(r"(ROLLBACK|HOLD|PROMOTE|RETRAIN) \w+ \(command", text):
                first_command = now
            if reading_at is not None:
                m = t.scrape(port)
                for (name, _labels), v in m.items():
                    if name in ("mle_stream_input_paused", "mle_stream_deferred_rows") and v > peaks.get(name, 0):
                        peaks[name] = v
                got = sum(v for (name, lab), v in m.items() if name == "mle_stream_input_messages_total"
                          and dict(lab)["topic"] in (topics.predictions, topics.labels))
                if got >= total_msgs:
                    done_at = now
                    break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    events = len(preds) + len(labels)
    print(json.dumps({"rate_per_model": rate, "predictions": len(preds), "labels": len(labels),
                      "messages": total_msgs, "produce_s": round(produce_s, 1),
                      "reading_from_s": reading_at, "done_s": done_at,
                      "catch_up_s": None if done_at is None else round(done_at - reading_at, 1),
                      "events_per_s": None if done_at is None else round(events / (done_at - reading_at)),
                      "peak_rss_mb": max(v for _, v in rss), "rss_samples": rss[::10],
                      "first_judged_window_s": first_judged, "first_command_s": first_command, "peaks": peaks}))

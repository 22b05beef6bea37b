"""The status page's HTTP server without Kafka: a hand-fed board served on a free port."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from mle_stream.core.events import CommandKind
from mle_stream.errors import ConfigError
from mle_stream.status.server import serve_status
from test_status_model import M, command, new_board, snapshot


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_page_api_and_errors() -> None:
    board, lock = new_board(), threading.Lock()
    board.apply(snapshot("1", 0, 0.1))
    board.apply(command(CommandKind.ROLLBACK, 10_000))
    board.apply(command(CommandKind.PROMOTE, 11_000, 100, key=None))  # forged: left off, counted
    server = serve_status(board, lock, 0)
    try:
        code, kind, body = get(server.url)
        assert code == 200 and kind.startswith("text/html")
        assert b"<script>" in body and b"http://" not in body.replace(b"http://www.w3.org", b"")  # no CDN
        code, kind, body = get(server.url + "api/status")
        assert code == 200 and kind == "application/json"
        data = json.loads(body)
        assert data["models"][0]["phase"] == "rolling back" and data["ignored"] == {"unverified": 1}
        assert [d["kind"] for d in data["models"][0]["decisions"]] == ["ROLLBACK"]
        with lock:
            board.apply(snapshot("2", 0, 0.3))  # the next poll sees it
        assert len(json.loads(get(server.url + f"api/status?model={M}")[2])["models"][0]["versions"]) == 2
        assert json.loads(get(server.url + "api/status?model=other")[2])["models"] == []
        assert get(server.url + "nope")[0] == 404
        with pytest.raises(ConfigError, match="cannot listen"):
            serve_status(board, lock, int(server.url.rsplit(":", 1)[1].strip("/")))
    finally:
        server.close()


def test_healthz_answers_the_workers_liveness_when_given_it() -> None:
    from mle_stream.health import WorkerHealth

    board, lock = new_board(), threading.Lock()
    health = WorkerHealth(checkpoint_max_age_s=90)
    plain, watched = serve_status(board, lock, 0), serve_status(board, lock, 0, health=health)
    try:
        assert get(plain.url + "healthz") == (200, "text/plain", b"ok\n")  # the page alone: it runs
        code, kind, body = get(watched.url + "healthz")
        assert code == 200 and kind == "application/json" and json.loads(body)["status"] == "ok"
        health.heartbeat({}, {}, {0: 0.0}, checkpoints_consistent=False)
        code, _, body = get(watched.url + "healthz")
        assert code == 503 and "writes no checkpoint again" in json.loads(body)["checks"]["checkpoints"]["detail"]
    finally:
        plain.close()
        watched.close()


def test_each_model_carries_the_workers_inputs_block_when_the_page_runs_in_a_worker() -> None:
    from mle_stream.stream.alignment import LabelsState
    from mle_stream.stream.metrics import WorkerMetrics

    class Marks:
        predictions, labels, event_time = 5_000, -1, -1

    board, lock, metrics = new_board(), threading.Lock(), WorkerMetrics()
    board.apply(snapshot("1", 0, 0.1))
    metrics.observe_inputs({M: Marks()}, {M: LabelsState(idle=False, enforced=False, caught_up=False)}, {}, {M: 0},
                           [("p", 0), ("l", 0)], set(), 10_000, labels_topic="l")
    with_inputs, without = serve_status(board, lock, 0, metrics=metrics), serve_status(board, lock, 0)
    try:
        (model,) = json.loads(get(with_inputs.url + "api/status")[2])["models"]
        assert model["inputs"]["state"] == "catching up" and model["inputs"]["watermarks"]["predictions"] == 5
        assert "inputs" not in json.loads(get(without.url + "api/status")[2])["models"][0]
    finally:
        with_inputs.close()
        without.close()

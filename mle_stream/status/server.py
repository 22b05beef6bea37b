"""The live status page: a small HTTP server in a daemon thread of the worker.

`/` is one self-contained HTML file (page.html: inline CSS and JS, plots drawn as SVG by its own
code, nothing fetched from a CDN: the page must work on machines without internet), `/api/status`
the StatusBoard as JSON (`?model=M` for one model), polled by the page every 1.5 s, each model with
the `inputs` block of the worker's metrics when the page runs in a worker (its input clocks, paused
predictions or labels, idle labels: WorkerMetrics.inputs_json); `/healthz`
answers the worker's liveness (mle_stream.health) when the page is given it, else "ok" (the page
runs). The board is fed by a StatusFeed reading the output topics.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from mle_stream.config import Topics
from mle_stream.errors import ConfigError
from mle_stream.health import Health
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.status.feed import StatusFeed
from mle_stream.status.model import UNVERIFIED, StatusBoard
from mle_stream.wire import WriterSchemas

if TYPE_CHECKING:
    from prometheus_client import Counter

    from mle_stream.verification import Verifier

log = logging.getLogger(__name__)


class WorkerMetrics(Protocol):
    """What the page reads and counts in the worker's metrics (mle_stream.stream.metrics.WorkerMetrics);
    a protocol, so the status page does not import the stream wiring."""

    unverified_commands: Counter
    status_ignored: Counter

    def inputs_json(self, model: str) -> dict[str, Any] | None: ...


PAGE = Path(__file__).with_name("page.html")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page)
        elif url.path == "/api/status":
            model = parse_qs(url.query).get("model", [None])[0]
            with self.server.lock:
                data = self.server.board.to_json(model)
            if self.server.metrics is not None:
                for entry in data["models"]:
                    entry["inputs"] = self.server.metrics.inputs_json(entry["model"])
            self._send(200, "application/json", json.dumps(data, allow_nan=False, default=str).encode())
        elif url.path == "/healthz" and self.server.health is not None:
            probe = self.server.health.liveness()
            self._send(200 if probe.ok else 503, "application/json", json.dumps(probe.to_json()).encode() + b"\n")
        elif url.path == "/healthz":
            self._send(200, "text/plain", b"ok\n")
        else:
            self._send(404, "text/plain", b"not found: try / or /api/status\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("status page: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], board: StatusBoard, lock: threading.Lock,
                 health: Health | None, metrics: WorkerMetrics | None) -> None:
        self.board = board
        self.lock = lock
        self.page = PAGE.read_bytes()
        self.health = health
        self.metrics = metrics
        super().__init__(address, _Handler)


@dataclass
class StatusServer:
    """A running status page; `close()` stops the server and its feed."""

    url: str
    board: StatusBoard
    lock: threading.Lock
    _http: _Server
    _feed: StatusFeed | None

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._feed is not None:
            self._feed.close()


def _listen(board: StatusBoard, lock: threading.Lock, port: int, bind: str, health: Health | None,
            metrics: WorkerMetrics | None) -> _Server:
    try:
        return _Server((bind, port), board, lock, health, metrics)
    except OSError as exc:
        raise ConfigError(f"status page: cannot listen on {bind}:{port}: {exc.strerror} (--status-port, "
                          f"MLE_STATUS_PORT; 0 turns the page off)") from None


def _serve(http: _Server, board: StatusBoard, lock: threading.Lock, feed: StatusFeed | None) -> StatusServer:
    threading.Thread(target=http.serve_forever, name="mle-stream-status-http", daemon=True).start()
    if feed is not None:
        feed.start()
    host, bound_port = http.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else str(host)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return StatusServer(f"http://{shown}:{bound_port}/", board, lock, http, feed)


def serve_status(board: StatusBoard, lock: threading.Lock, port: int, bind: str = "127.0.0.1",
                 feed: StatusFeed | None = None, health: Health | None = None,
                 metrics: WorkerMetrics | None = None) -> StatusServer:
    """Serve `board` on bind:port (0: any free port) in a daemon thread, /healthz answering `health`'s
    liveness, each model's `inputs` from the worker's `metrics` if given; starts `feed` if given."""
    return _serve(_listen(board, lock, port, bind, health, metrics), board, lock, feed)


def count_ignored(metrics: WorkerMetrics) -> Callable[[str, str, int], None]:
    """The feed's `on_ignored` counting into the worker's metrics: forged commands in
    mle_stream_unverified_commands (component "status"), anything else left off the page in
    mle_stream_status_ignored_records."""

    def count(topic: str, reason: str, n: int) -> None:
        if reason == UNVERIFIED:
            metrics.unverified_commands.labels(topic, "status").inc(n)
        else:
            metrics.status_ignored.labels(topic, reason).inc(n)

    return count


def start_status_page(bootstrap: str, topics: Topics, checks_by_model: Mapping[str, Sequence[str]], port: int,
                      bind: str = "127.0.0.1", health: Health | None = None, *, verify: Verifier,
                      metrics: WorkerMetrics | None = None,
                      security: KafkaSecurity = PLAINTEXT,
                      registry: WriterSchemas | None = None) -> StatusServer | None:
    """The worker's status page: a board of the topologies' models (`checks_by_model`: each model and
    its checks' metrics, the ones plotted) fed from the output topics (read with `security`), showing
    the commands `verify` accepts, served on bind:port, its /healthz answering `health`'s liveness;
    what it leaves off is counted in `metrics`. A port in use is logged and gives None: the page must
    never keep a worker from running."""
    board = StatusBoard(checks_by_model, verify=verify)
    lock = threading.Lock()
    try:
        http = _listen(board, lock, port, bind, health, metrics)
    except ConfigError as exc:  # a second worker on this host: it works on, without a page
        log.warning("%s; the worker runs without a status page", exc)
        return None
    feed = StatusFeed(bootstrap, topics, board, lock, on_ignored=count_ignored(metrics) if metrics else None,
                      security=security, registry=registry)
    server = _serve(http, board, lock, feed)
    log.info("status page on %s", server.url)
    return server

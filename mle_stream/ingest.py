"""`mle-stream ingest`: an HTTP endpoint for KServe's inference logger, and for labels over HTTP.

POST /        a CloudEvent from KServe's logger (binary mode). Its request and response halves are
              paired by ce-id in a bounded table (core/pending_pairs.py) and mapped to predictions by
              the model's `ingest:` mapping (core/kserve_logger.py).
POST /labels  one label or a list of labels as JSON (the Label contract's fields).
GET /healthz  200 while the server runs. GET /metrics: Prometheus metrics (mle_stream_ingest_*).

Records go out through an EvaluationClient: queued in memory and sent in batches by its own
thread, so a post never waits for Kafka. KServe's logger sends each event once and only logs a
non-200 answer, so an accepted event is answered 200 and anything refused with a 4xx whose body
says what was wrong and where (docs/ingest.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mle_stream import wire
from mle_stream.core.events import Label, Prediction
from mle_stream.core.kserve_logger import REASONS, LoggedEvent, Rejected, parse_event, parse_json, to_predictions
from mle_stream.core.pending_pairs import Dropped, PendingPairs
from mle_stream.core.topology import Topology
from mle_stream.errors import ConfigError, InvalidEvent

MAX_LABELS = 10_000  # per POST /labels


class Publisher(Protocol):
    """What the server needs of mle_stream.client.EvaluationClient."""

    def log_prediction(self, p: Prediction) -> bool: ...

    def log_label(self, label: Label) -> bool: ...


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # a larger post is refused (413)
    max_pending: int = 10_000  # halves waiting for their counterpart
    max_pending_bytes: int = 64 << 20  # bodies of those halves, in bytes (parsed, they take a few times that)
    pair_timeout_s: float = 30.0  # an unpaired half is dropped after this long


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("mle_stream_ingest_events", "CloudEvents received, by ce-type kind (request, response)",
                              ["type"], registry=r)
        self.paired = Counter("mle_stream_ingest_paired", "Request/response pairs completed", registry=r)
        self.unpaired = Counter("mle_stream_ingest_unpaired", "Halves dropped without their counterpart, by kind and "
                                "why (expired: pair timeout; evicted: the pending table was full)",
                                ["type", "why"], registry=r)
        self.rejected = Counter("mle_stream_ingest_rejected", "Posts refused with a 4xx, by reason (headers, body, "
                                "unknown_inference_service, duplicate, mismatch, mapping, version, too_large, labels)",
                                ["reason"], registry=r)
        self.records = Counter("mle_stream_ingest_records", "Records handed to the Kafka client (published) or "
                               "dropped because its queue was full, by kind (prediction, label)",
                               ["kind", "outcome"], registry=r)
        self.pending = Gauge("mle_stream_ingest_pending", "Halves waiting for their counterpart", registry=r)
        self.pending_bytes = Gauge("mle_stream_ingest_pending_bytes", "Bytes of the bodies waiting", registry=r)
        for reason in (*REASONS, "too_large", "labels"):
            self.rejected.labels(reason)
        for kind in ("request", "response"):
            self.events.labels(kind)


class IngestServer:
    """The aiohttp application; one per process. Everything runs on its event loop."""

    def __init__(self, topologies: Mapping[str, Topology], publisher: Publisher, limits: Limits = Limits(),
                 metrics: IngestMetrics | None = None) -> None:
        self.publisher = publisher
        self.limits = limits
        self.metrics = metrics or IngestMetrics()
        self.models = set(topologies)
        self._by_service: dict[str, Topology] = {}
        for t in topologies.values():
            service = t.ingest.inference_service or t.model
            if service in self._by_service:
                raise ConfigError(f"{t.source}: InferenceService {service!r} already feeds model "
                                 f"{self._by_service[service].model!r} ({self._by_service[service].source})")
            self._by_service[service] = t
        self.pending: PendingPairs[LoggedEvent] = PendingPairs(
            limits.max_pending, limits.max_pending_bytes, int(limits.pair_timeout_s * 1000))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_post("/", self.handle_event)
        app.router.add_post("/labels", self.handle_labels)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.cleanup_ctx.append(self._expiry)
        return app

    async def _expiry(self, _app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(min(1.0, self.limits.pair_timeout_s / 4))
                self._count_dropped(self.pending.expire(_now_ms()))

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()

    def _count_dropped(self, dropped: list[Dropped]) -> None:
        for d in dropped:
            self.metrics.unpaired.labels(d.kind, d.why).inc()
        self.metrics.pending.set(len(self.pending))
        self.metrics.pending_bytes.set(self.pending.bytes)

    def _refuse(self, reason: str, message: str, status: int = 400) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        return web.json_response({"error": message, "reason": reason}, status=status)

    async def _body(self, request: web.Request) -> bytes | web.Response:
        limit = self.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._refuse("too_large", f"body: {request.content_length} bytes, more than the limit of {limit} "
                                             f"(mle-stream ingest --max-body-bytes)", 413)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                return self._refuse("too_large", f"body: more than the limit of {limit} bytes "
                                                 f"(mle-stream ingest --max-body-bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle_event(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), value)  # a repeated header: the first one counts
        try:
            event = parse_event(headers, body)
        except Rejected as exc:
            return self._refuse(exc.reason, str(exc))
        self.metrics.events.labels(event.kind).inc()
        topology = self._by_service.get(event.inference_service)
        if topology is None or (topology.ingest.namespace and topology.ingest.namespace != event.namespace):
            known = ", ".join(sorted(self._by_service)) or "none"
            return self._refuse("unknown_inference_service",
                                f"ce-inferenceservicename: no topology takes events of "
                                f"{event.inference_service[:120]!r} in namespace {event.namespace[:120]!r} "
                                f"(ingest.inference_service, ingest.namespace; known: {known})", 422)
        key = (event.inference_service, event.attributes.get("component", ""), event.id)
        if self.pending.waiting(key) == event.kind:
            return self._refuse("duplicate", f"ce-id: a {event.kind} with id {event.id[:120]!r} is already waiting for "
                                             f"its counterpart", 409)
        now = _now_ms()
        pair, dropped = self.pending.offer(key, event.kind, event, len(body), now)
        self._count_dropped(dropped)
        if pair is None:
            return web.json_response({"status": "waiting for the " + ("response" if event.kind == "request"
                                                                      else "request")})
        self.metrics.paired.inc()
        try:
            predictions = to_predictions(*pair, topology.model, topology.task, topology.ingest, int(time.time() * 1000))
            for p in predictions:
                wire.check_record(p)  # what the client would refuse: a 422 naming the field, not a 503
        except Rejected as exc:
            return self._refuse(exc.reason, str(exc), 422)
        except InvalidEvent as exc:
            return self._refuse("mapping", str(exc), 422)
        published = self._publish("prediction", predictions)
        return self._outcome(published, len(predictions))

    def _publish(self, kind: str, records: list[Any]) -> int:
        send = self.publisher.log_prediction if kind == "prediction" else self.publisher.log_label
        published = sum(1 for r in records if send(r))
        self.metrics.records.labels(kind, "published").inc(published)
        self.metrics.records.labels(kind, "dropped").inc(len(records) - published)
        return published

    def _outcome(self, published: int, total: int) -> web.Response:
        if published < total:
            return web.json_response({"error": f"{total - published} of {total} records dropped: the Kafka client's "
                                               f"queue is full (is Kafka reachable?); retry later",
                                      "published": published}, status=503)
        return web.json_response({"published": published})

    async def handle_labels(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            data = parse_json(body, "body", "labels")
        except Rejected as exc:
            return self._refuse(exc.reason, str(exc))
        items = data if isinstance(data, list) else [data]
        if not items or len(items) > MAX_LABELS:
            return self._refuse("labels", f"body: expected one label or a list of 1 to {MAX_LABELS}, got {len(items)}")
        labels = []
        for i, item in enumerate(items):
            where = f"[{i}]" if isinstance(data, list) else "label"
            try:
                label = wire.label_from_dict(item)  # unknown fields ignored, as the worker ignores them
                wire.check_record(label)
            except InvalidEvent as exc:
                return self._refuse("labels", f"{where}: {exc}")
            if label.model not in self.models:
                return self._refuse("labels", f"{where}.model: no topology for model {label.model[:120]!r} (known: "
                                              f"{', '.join(sorted(self.models))})", 422)
            labels.append(label)
        return self._outcome(self._publish("label", labels), len(labels))

    async def handle_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending": len(self.pending)})

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _now_ms() -> int:
    # Pairing runs on the monotonic clock: a wall-clock step must not expire or keep halves.
    return int(time.monotonic() * 1000)


class RunningServer:
    """An IngestServer listening on its own event loop in a background thread."""

    def __init__(self, server: IngestServer, host: str, port: int) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(server.app(), access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        try:
            self._loop.run_until_complete(web.TCPSite(self._runner, host, port).start())
        except OSError:  # e.g. the port is taken: release what setup() made
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()
            raise
        sockets = self._runner.addresses
        self.port: int = sockets[0][1] if sockets else port
        self._thread = threading.Thread(target=self._loop.run_forever, name="mle-stream-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

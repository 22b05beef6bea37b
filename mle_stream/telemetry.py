"""Prometheus metrics: what both process roles share, the actuator's metrics, and their HTTP
exposition (the worker's are in mle_stream.stream.metrics).

Each process role has its own `CollectorRegistry` (never the global default one), so a test can
build several side by side. Every name starts with `mle_stream_`; labels stay bounded: per model,
version, metric name, topic and partition, never per prediction, command or window. docs/operations.md
("Prometheus metrics") lists them all, and grafana/mle-stream-dashboard.json is built on them.

The actuator updates its metrics once per command.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mle_stream.health import Health, register_metrics, start_server

log = logging.getLogger(__name__)


class RoleMetrics:
    """Metrics of one process role, in `registry` (a new one by default; never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

    def _counter(self, name: str, help_text: str, *labels: str) -> Counter:
        return Counter(name, help_text, labels, registry=self.registry)

    def _gauge(self, name: str, help_text: str, *labels: str) -> Gauge:
        return Gauge(name, help_text, labels, registry=self.registry)

    def _histogram(self, name: str, help_text: str, buckets: Sequence[float], *labels: str) -> Histogram:
        return Histogram(name, help_text, labels, registry=self.registry, buckets=buckets)

    def _unverified_commands(self) -> Counter:
        # One name in both roles, so one query sums the whole deployment; the model a forged command
        # names is never a label (the forger would choose the label set).
        return self._counter(
            "mle_stream_unverified_commands", "Commands that failed signature verification and were not shown, "
            "acted on or notified, by the topic they were read from and the component that read them (worker: an "
            "APPROVE, dead-lettered; status: the status page's feed, skipped; actuator: rejected)", "topic",
            "component")


class ActuatorMetrics(RoleMetrics):
    """The actuator's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.commands = self._counter(
            "mle_stream_actuator_commands", "Commands the actuator received and decoded, by kind (a failing command "
            "counts again at every redelivery)", "kind")
        self.outcomes = self._counter(
            "mle_stream_actuator_outcomes", "Outcomes of applying commands, by kind and rollout status (APPLIED, "
            "SKIPPED_DUPLICATE, DRY_RUN, REJECTED, FAILED); a FAILED command being redelivered counts every attempt",
            "kind", "status")
        self.redeliveries = self._counter(
            "mle_stream_actuator_redeliveries", "Commands that FAILED on transient errors and will be applied again "
            "after a wait, by kind (one per attempt)", "kind")
        self.apply_seconds = self._histogram(
            "mle_stream_actuator_apply_seconds", "Time to apply one command (verify, route, registry), in seconds, "
            "by kind", (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0), "kind")
        self.dead_letters = self._counter(
            "mle_stream_dead_letters", "Messages sent to the dead-letter topic, by the topic they were read from and "
            "reason class (undecodable: not a command)", "topic", "reason")
        self.unverified_commands = self._unverified_commands()


def serve(registry: CollectorRegistry, port: int, bind: str = "0.0.0.0", health: Health | None = None) -> int | None:
    """Serve `registry` at http://BIND:PORT/metrics, and the probes of `health` at /livez, /readyz and
    /healthz (mle_stream.health), from a daemon thread; returns the port, None when `port` is 0
    (disabled) or taken. A port in use does not stop the component (metrics are not worth losing the
    evaluation or a rollback over): it logs an error naming the flag to change."""
    if not port:
        return None
    try:
        server = start_server(registry, port, bind, health)
    except OSError as exc:
        log.error("cannot serve Prometheus metrics on %s:%d: %s; running without them (choose another port "
                  "with --metrics-port or MLE_METRICS_PORT, 0 to disable)", bind, port, exc)
        return None
    if health is not None:
        register_metrics(registry, health)
    log.info("Prometheus metrics on http://%s:%d/metrics%s", bind, server.server_port,
             ", probes on /livez and /readyz" if health is not None else "")
    return int(server.server_port)

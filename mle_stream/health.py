"""Liveness and readiness of the worker and the actuator, and the HTTP server that answers them
next to the Prometheus metrics.

Liveness (`/livez`, and `/healthz`, its conventional alias) answers "restart me": it fails only
when waiting cannot help, and a restart resuming from the last checkpoint or the last committed
command can:

- the worker's agent is not running (it crashed, and Faust did not start it again) or its event loop
  gave no sign of life for `heartbeat_max_age_s`; the actuator's consume loop has stopped or has not
  come round for `stall_after_s`;
- the worker holds input older than `checkpoint_max_age_s` that no checkpoint includes, or a batch
  failed midway, after which the process writes no checkpoint again;
- an input partition has messages waiting (lag > 0) and the worker's position in it has not moved
  for `stall_after_s` outside rebalances. A worker catching up a backlog moves; an idle one has
  nothing waiting; one restoring checkpoints after a rebalance is not ready yet; an input partition
  the worker paused on purpose (predictions until their labels catch up, or labels until their
  predictions do) waits by design: none is stalled.

Readiness (`/readyz`) answers "count me": alive, started, and (worker) the partitions of the last
rebalance restored from their checkpoints, (actuator) partitions assigned. It fails during a
rebalance by design.

`WorkerHealth` and `ActuatorHealth` decide from what the component reports (timestamps, positions)
and a clock; they hold no Kafka or Faust object, so the rules are tested with a hand-driven clock.
Reports come from the event loop or the consume loop, probes from the HTTP thread: one lock each.
An answer is JSON: `{"status": "ok"|"fail", "checks": {name: {"ok": bool, "detail": str}}}`, with
HTTP 200 or 503.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler

from mle_stream.config import duration_ms, read

# Defaults. The checkpoint bound leaves two intervals' slack for a slow write or a busy batch, and a
# floor for short intervals (a large state takes a while to snapshot and write).
CHECKPOINT_INTERVALS = 3
CHECKPOINT_FLOOR_S = 120.0
# A partition may sit unmoved while one long checkpoint round or batch holds the agent; the actuator
# waits up to 120 s between attempts at a failing command (runner.REDELIVER) and an attempt may
# retry for about a minute.
STALL_AFTER_S = 300.0
# The worker's event loop reports every HEARTBEAT_S; a minute without a report means it is blocked
# or Faust has stopped its timers.
HEARTBEAT_S = 2.0
HEARTBEAT_MAX_AGE_S = 60.0
# Faust's supervisor replaces a crashed actor at once: no running actor for longer than this means
# nobody will.
AGENT_GRACE_S = 5.0

TP = tuple[str, int]


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Probe:
    """The answer of one endpoint: every check, ok or not."""

    checks: dict[str, Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {c.detail}" for name, c in self.checks.items() if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "fail",
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()}}


class Health(Protocol):
    """What the HTTP server asks a component."""

    def liveness(self) -> Probe: ...

    def readiness(self) -> Probe: ...

    def collect(self) -> Iterable[Metric]: ...


@dataclass(frozen=True)
class HealthSettings:
    """The bounds of the liveness rules, from MLE_HEALTH_CHECKPOINT_MAX_AGE and MLE_HEALTH_STALL_AFTER
    (durations such as 90s, 5m; a bare number is seconds)."""

    checkpoint_max_age_s: float
    stall_after_s: float = STALL_AFTER_S

    @classmethod
    def from_env(cls, checkpoint_interval_s: float, env: Mapping[str, str] | None = None) -> HealthSettings:
        default_age = max(CHECKPOINT_INTERVALS * checkpoint_interval_s, CHECKPOINT_FLOOR_S)
        return cls(_duration_s(env, "MLE_HEALTH_CHECKPOINT_MAX_AGE", default_age),
                   _duration_s(env, "MLE_HEALTH_STALL_AFTER", STALL_AFTER_S))


def _duration_s(env: Mapping[str, str] | None, name: str, default: float) -> float:
    raw = read(name, env).strip()
    return duration_ms(raw, name, "90s or 5m") / 1000 if raw else default


def _ago(now: float, then: float) -> str:
    return f"{now - then:.0f} s ago"


# -- the worker -------------------------------------------------------------------------------------


@dataclass
class _Partition:
    position: int
    lag: int | None
    since: float  # when the position last moved, or nothing was waiting


@dataclass
class _WorkerState:
    agent_running: int = 0
    agent_started: bool = False
    agent_stopped_at: float | None = None
    crashes: int = 0
    last_crash: str = ""
    beat_at: float | None = None
    ready: bool = False  # the partitions of the last rebalance are restored
    rebalancing_since: float | None = None
    held: frozenset[int] = frozenset()
    unsaved_since: dict[int, float] = field(default_factory=dict)
    checkpoints_consistent: bool = True
    partitions: dict[TP, _Partition] = field(default_factory=dict)


class WorkerHealth:
    """The worker's liveness and readiness, from what its event loop reports (module docstring)."""

    def __init__(self, checkpoint_max_age_s: float, stall_after_s: float = STALL_AFTER_S,
                 heartbeat_max_age_s: float = HEARTBEAT_MAX_AGE_S, agent_grace_s: float = AGENT_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, value in (("checkpoint_max_age_s", checkpoint_max_age_s), ("stall_after_s", stall_after_s),
                            ("heartbeat_max_age_s", heartbeat_max_age_s), ("agent_grace_s", agent_grace_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.checkpoint_max_age_s = checkpoint_max_age_s
        self.stall_after_s = stall_after_s
        self.heartbeat_max_age_s = heartbeat_max_age_s
        self.agent_grace_s = agent_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._s = _WorkerState()

    @classmethod
    def from_env(cls, checkpoint_interval_s: float, env: Mapping[str, str] | None = None) -> WorkerHealth:
        settings = HealthSettings.from_env(checkpoint_interval_s, env)
        return cls(settings.checkpoint_max_age_s, settings.stall_after_s)

    # -- reports ------------------------------------------------------------------------------------

    def watch_agent(self, fun: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """Wrap a Faust agent function so that the health knows whether an actor of it runs and why
        the last one ended. Cancellation is Faust stopping or restarting it on a rebalance: no crash."""

        @functools.wraps(fun)
        async def watched(stream: Any) -> None:
            self.agent_started()
            try:
                await fun(stream)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.agent_crashed(exc)
                raise
            finally:
                self.agent_stopped()

        return watched

    def agent_started(self) -> None:
        with self._lock:
            self._s.agent_running += 1
            self._s.agent_started = True

    def agent_crashed(self, exc: BaseException) -> None:
        with self._lock:
            self._s.crashes += 1
            self._s.last_crash = f"{type(exc).__name__}: {exc}"

    def agent_stopped(self) -> None:
        with self._lock:
            self._s.agent_running -= 1
            self._s.agent_stopped_at = self._clock()

    def rebalancing(self) -> None:
        """Partitions were revoked: a rebalance is on, and positions start afresh after it."""
        with self._lock:
            self._s.ready = False
            self._s.rebalancing_since = self._clock()
            self._s.partitions.clear()

    def restored(self, partitions: Collection[int]) -> None:
        """The rebalance is complete and these input partitions are restored: reading resumes."""
        with self._lock:
            self._s.ready = True
            self._s.rebalancing_since = None
            self._s.held = frozenset(partitions)

    def heartbeat(self, positions: Mapping[TP, int], ends: Mapping[TP, int | None],
                  unsaved_since: Mapping[int, float], checkpoints_consistent: bool,
                  paused: Collection[TP] = ()) -> None:
        """From the event loop, every HEARTBEAT_S: the next offset to process and the high watermark
        (None: unknown) of each held input partition, when each held partition's oldest input not
        in a checkpoint was processed (on this object's clock), whether checkpoints are still
        written at all, and the input partitions the worker has paused (stream/alignment.py)."""
        with self._lock:
            now = self._clock()
            s = self._s
            s.beat_at = now
            s.unsaved_since = dict(unsaved_since)
            s.checkpoints_consistent = checkpoints_consistent
            previous = s.partitions
            s.partitions = {}
            for tp, position in positions.items():
                end = ends.get(tp)
                lag = None if end is None else max(end - position, 0)
                before = previous.get(tp)
                moved = before is None or before.position != position
                # A paused partition does not move by design: its stall clock starts when it resumes.
                waiting = lag is not None and lag > 0 and tp not in paused
                # Restoring checkpoints after a rebalance may take minutes without moving: not a stall.
                since = before.since if before is not None and not moved and waiting and s.ready else now
                s.partitions[tp] = _Partition(position, lag, since)

    # -- rules --------------------------------------------------------------------------------------

    def liveness(self) -> Probe:
        with self._lock:
            return Probe(self._live_checks(self._clock()))

    def readiness(self) -> Probe:
        with self._lock:
            now = self._clock()
            checks = self._live_checks(now)
            s = self._s
            if s.beat_at is None or not s.agent_started:
                checks["started"] = Check(False, "the worker has not started consuming yet")
            else:
                checks["started"] = Check(True, "consuming")
            if s.ready:
                checks["partitions"] = Check(True, f"input partitions {sorted(s.held)} restored")
            elif s.rebalancing_since is not None:
                checks["partitions"] = Check(False, f"rebalancing since {_ago(now, s.rebalancing_since)}: "
                                                    f"partitions are being assigned and restored")
            else:
                checks["partitions"] = Check(False, "no partitions assigned and restored yet")
            return Probe(checks)

    def _live_checks(self, now: float) -> dict[str, Check]:
        return {"agent": self._agent_check(now), "event_loop": self._loop_check(now),
                "checkpoints": self._checkpoint_check(now), "consumer": self._consumer_check(now)}

    def _agent_check(self, now: float) -> Check:
        s = self._s
        crashed = f"; {s.crashes} crash(es), the last: {s.last_crash}" if s.crashes else ""
        if s.agent_running > 0:
            return Check(True, f"running{crashed}")
        if not s.agent_started:
            return Check(True, "not started yet")
        assert s.agent_stopped_at is not None
        if now - s.agent_stopped_at <= self.agent_grace_s:
            return Check(True, f"restarting (stopped {_ago(now, s.agent_stopped_at)}){crashed}")
        return Check(False, f"the agent is not running: it stopped {_ago(now, s.agent_stopped_at)} and Faust did "
                            f"not start it again{crashed}")

    def _loop_check(self, now: float) -> Check:
        beat = self._s.beat_at
        if beat is None:
            return Check(True, "not started yet")
        if now - beat > self.heartbeat_max_age_s:
            return Check(False, f"no heartbeat from the event loop for {now - beat:.0f} s (bound "
                                f"{self.heartbeat_max_age_s:.0f} s): it is blocked, or Faust has stopped")
        return Check(True, f"last heartbeat {_ago(now, beat)}")

    def _checkpoint_check(self, now: float) -> Check:
        s = self._s
        if not s.checkpoints_consistent:
            return Check(False, "a batch failed after it changed the state: the state no longer matches the "
                                "offsets, so this process writes no checkpoint again; a restart resumes from "
                                "the last one")
        if not s.unsaved_since:
            return Check(True, "everything processed is in a checkpoint")
        partition, since = min(s.unsaved_since.items(), key=lambda item: item[1])
        age = now - since
        if age > self.checkpoint_max_age_s:
            return Check(False, f"partition {partition} holds input processed {age:.0f} s ago that no checkpoint "
                                f"includes (bound {self.checkpoint_max_age_s:.0f} s): checkpoints are not "
                                f"being written")
        return Check(True, f"oldest input not in a checkpoint: {age:.0f} s (partition {partition})")

    def _stalled(self, now: float) -> list[tuple[TP, _Partition]]:
        return sorted(((tp, p) for tp, p in self._s.partitions.items()
                       if p.lag and now - p.since > self.stall_after_s), key=lambda item: item[0])

    def _consumer_check(self, now: float) -> Check:
        stalled = self._stalled(now)
        if stalled:
            listed = ", ".join(f"{t}[{p}] at offset {part.position} with {part.lag} waiting since "
                               f"{_ago(now, part.since)}" for (t, p), part in stalled)
            return Check(False, f"not advancing while input is waiting (bound {self.stall_after_s:.0f} s): {listed}")
        waiting = sum(p.lag or 0 for p in self._s.partitions.values())
        return Check(True, f"{waiting} message(s) waiting, every partition advancing")

    # -- metrics ------------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Computed when scraped, so the ages grow even while the event loop is stuck."""
        with self._lock:
            now = self._clock()
            s = self._s
            age = GaugeMetricFamily(
                "mle_stream_checkpoint_age_seconds", "Seconds since each held input partition's state was last "
                "saved: 0 while everything it processed is in a checkpoint, else the age of its oldest input no "
                "checkpoint includes", labels=["partition"])
            for k in sorted(s.held | set(s.unsaved_since)):
                since = s.unsaved_since.get(k)
                age.add_metric([str(k)], 0.0 if since is None else now - since)
            crashes = CounterMetricFamily(
                "mle_stream_agent_crashes", "Times the worker's Faust agent ended with an exception (Faust's "
                "supervisor may have started it again)", value=s.crashes)
            running = GaugeMetricFamily(
                "mle_stream_agent_running", "1 while an actor of the worker's Faust agent runs, else 0",
                value=1.0 if s.agent_running > 0 else 0.0)
            stalled = GaugeMetricFamily(
                "mle_stream_consumer_stalled", "1 for an input partition with messages waiting whose position has "
                "not moved for MLE_HEALTH_STALL_AFTER, else 0", labels=["topic", "partition"])
            stuck = {tp for tp, _ in self._stalled(now)}
            for tp in sorted(s.partitions):
                stalled.add_metric([tp[0], str(tp[1])], 1.0 if tp in stuck else 0.0)
        return [age, crashes, running, stalled]


# -- the actuator -----------------------------------------------------------------------------------


class ActuatorHealth:
    """The actuator's liveness and readiness, from what its consume loop reports."""

    def __init__(self, stall_after_s: float = STALL_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not stall_after_s > 0:
            raise ValueError(f"stall_after_s must be > 0, got {stall_after_s}")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._beat_at: float | None = None
        self._stopped: str | None = None  # why the loop ended
        self._assigned: list[int] | None = None
        self._command_at: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ActuatorHealth:
        return cls(_duration_s(env, "MLE_HEALTH_STALL_AFTER", STALL_AFTER_S))

    def loop_started(self) -> None:
        with self._lock:
            self._started_at = self._beat_at = self._clock()
            self._stopped = None

    def loop_beat(self) -> None:
        """Once per round of the consume loop."""
        with self._lock:
            self._beat_at = self._clock()

    def command_processed(self) -> None:
        with self._lock:
            self._command_at = self._clock()

    def assigned(self, partitions: Collection[int]) -> None:
        with self._lock:
            self._assigned = sorted(partitions)

    def revoked(self) -> None:
        with self._lock:
            self._assigned = None

    def loop_stopped(self, exc: BaseException | None) -> None:
        with self._lock:
            self._stopped = "it returned (stop requested)" if exc is None else f"{type(exc).__name__}: {exc}"

    def _loop_check(self, now: float) -> Check:
        if self._stopped is not None:
            return Check(False, f"the consume loop has stopped: {self._stopped}")
        if self._beat_at is None:
            return Check(True, "not started yet")
        if now - self._beat_at > self.stall_after_s:
            return Check(False, f"the consume loop has not come round for {now - self._beat_at:.0f} s (bound "
                                f"{self.stall_after_s:.0f} s): stuck applying a command?")
        return Check(True, f"last round {_ago(now, self._beat_at)}")

    def liveness(self) -> Probe:
        with self._lock:
            return Probe({"loop": self._loop_check(self._clock())})

    def readiness(self) -> Probe:
        with self._lock:
            now = self._clock()
            checks = {"loop": self._loop_check(now)}
            checks["started"] = (Check(False, "the consume loop has not started yet") if self._started_at is None
                                 else Check(True, "consuming"))
            if self._assigned is None:
                checks["partitions"] = Check(False, "no partitions of the commands topic assigned yet")
            else:
                checks["partitions"] = Check(True, f"partitions {self._assigned} of the commands topic assigned")
            return Probe(checks)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self._clock()
            alive = GaugeMetricFamily("mle_stream_actuator_loop_alive", "1 while the actuator's consume loop runs "
                                      "and comes round within MLE_HEALTH_STALL_AFTER, else 0",
                                      value=1.0 if self._loop_check(now).ok and self._started_at is not None else 0.0)
            since = self._command_at if self._command_at is not None else self._started_at
            age = GaugeMetricFamily("mle_stream_actuator_last_command_age_seconds", "Seconds since the actuator last "
                                    "finished a message of the commands topic (since its loop started if none yet; "
                                    "NaN before)", value=math.nan if since is None else now - since)
        return [alive, age]


# -- HTTP -------------------------------------------------------------------------------------------


class _Collector:
    """Puts a component's health metrics into its registry, computed at each scrape."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterable[Metric]:
        return self._health.collect()


def register_metrics(registry: CollectorRegistry, health: Health) -> None:
    registry.register(_Collector(health))  # type: ignore[arg-type]  # a Collector by its collect method


HEALTH_PATHS = ("/livez", "/readyz", "/healthz")


class _Handler(MetricsHandler):
    """Prometheus' own handler (every other path is the metrics, as with start_http_server), plus the
    health endpoints."""

    health: Health | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if path not in HEALTH_PATHS:
            super().do_GET()
            return
        if self.health is None:
            probe = Probe({"health": Check(True, "no health checks in this process")})
        else:
            probe = self.health.readiness() if path == "/readyz" else self.health.liveness()
        body = json.dumps(probe.to_json(), sort_keys=True).encode() + b"\n"
        self.send_response(200 if probe.ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def start_server(registry: CollectorRegistry, port: int, bind: str, health: Health | None) -> ThreadingHTTPServer:
    """Serve the metrics of `registry` and the probes of `health` on bind:port (0: any free port) from a
    daemon thread; OSError when the address cannot be bound."""
    handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
    # An IPv6 address such as '::' needs an IPv6 socket (prometheus_client's own server does the same).
    family = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server = type("Server", (_Server,), {"address_family": family})((bind, port), handler)
    threading.Thread(target=server.serve_forever, name="mle-stream-metrics-http", daemon=True).start()
    return server

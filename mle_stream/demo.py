"""`mle-stream demo`: the whole system on one machine, with a canary that goes bad.

The broker, MLflow (sqlite) and the GitOps repository are real; the worker and the actuator run as
their own processes, exactly as `mle-stream worker` and `mle-stream actuator` would. Only the
serving pods and the labelers are simulated: they publish through the same client a real pod uses,
and route traffic by reading the route manifest the actuator commits, as a gateway would.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Consumer

from mle_stream import wire
from mle_stream.client import EvaluationClient
from mle_stream.config import Settings, Topics
from mle_stream.core.events import Command, Label, MetricSnapshot, Prediction, RolloutEvent, RolloutStatus
from mle_stream.core.topology import Topology, load_topology
from mle_stream.errors import ConfigError
from mle_stream.kafka import bootstrap_servers, consumer_config, ensure_topics
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.keys import generate_key_pair
from mle_stream.redact import redact_servers, redact_uri


def default_topology() -> Path:
    """The demo topology: inside the package for a wheel install, at the repo top otherwise."""
    here = Path(__file__).resolve().parent
    for folder in (here / "topologies", here.parent / "topologies"):
        if (folder / "fraud-detector-canary.yaml").is_file():
            return folder / "fraud-detector-canary.yaml"
    raise ConfigError(f"the demo topology fraud-detector-canary.yaml is in neither {here / 'topologies'} "
                      f"nor {here.parent / 'topologies'}; pass --topology")


HEALTHY_ACCURACY = 0.92
DEGRADED_ACCURACY = 0.80  # the candidate's error rate goes from 8% to 20%
PREDICTIONS_PER_S = 400
LABEL_DELAY_S = (0.5, 3.0)
LABEL_LOSS = 0.05  # share of predictions that never get a label
DEMO_KEY_ID = "demo-worker"
# The demo's components get its own key pair, never the caller's keys (mle_stream/keys.py).
_KEY_VARIABLES = ("MLE_SIGNING_KEY", "MLE_SIGNING_KEY_FILE", "MLE_SIGNING_KEY_ID", "MLE_VERIFY_KEYS_DIR",
                  "MLE_VERIFY_KEYS")
AFTER_ROLLBACK_S = 3.0  # keep traffic flowing this long after the rollback, to show it on v1 only


def now_ms() -> int:
    return int(time.time() * 1000)


class Timeline:
    """Readable lines with the seconds since the demo started."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)


class Component:
    """A `mle-stream` subcommand in its own process, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # In the demo's directory: Faust's data directory goes there, not into the caller's.
        self.process = subprocess.Popen([sys.executable, "-m", "mle_stream", *args], env=env, cwd=log_path.parent,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@dataclass
class Observed:
    """What the demo saw on the output topics."""

    snapshots: list[MetricSnapshot] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    events: list[RolloutEvent] = field(default_factory=list)


class Watcher(threading.Thread):
    """Reads metrics, commands and rollout events, and narrates them."""

    def __init__(self, bootstrap: str, topics: Topics, topology: Topology, timeline: Timeline,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        super().__init__(name="demo-watcher", daemon=True)
        self.topics = topics
        self.topology = topology
        self.timeline = timeline
        self.seen = Observed()
        self.stop_event = threading.Event()
        self._consumer = Consumer(consumer_config(bootstrap, f"mle-stream-demo-{uuid.uuid4().hex[:8]}",
                                                  security=security))
        self._consumer.subscribe([topics.metrics, topics.commands, topics.rollout_events])
        self._baseline: dict[int, MetricSnapshot] = {}

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                for message in self._consumer.consume(num_messages=100, timeout=0.3):
                    if message.error() is None:
                        self._observe(message.topic(), message.value() or b"")
        finally:
            self._consumer.close()

    def _observe(self, topic: str | None, value: bytes) -> None:
        if topic == self.topics.metrics:
            snap = wire.decode_metric_snapshot(value)
            self.seen.snapshots.append(snap)
            if snap.segment is not None or snap.status != "CLOSED":
                return  # the timeline tells judged windows; updates are for dashboards
            if snap.role == "baseline":
                self._baseline[snap.window_start] = snap
            elif snap.role == "candidate":
                self._narrate_window(snap, self._baseline.get(snap.window_start))
        elif topic == self.topics.commands:
            command = wire.decode_command(value)
            self.seen.commands.append(command)
            self.timeline.say(f"worker  → {command.kind.value} {command.model} v{command.candidate_version} "
                              f"(command {command.command_id[:12]}): {command.reason}")
        elif topic == self.topics.rollout_events:
            event = wire.decode_rollout_event(value)
            self.seen.events.append(event)
            weights = ", ".join(f"v{v}: {p}%" for v, p in sorted(event.route_weights.items()))
            self.timeline.say(f"actuator → {event.status.value} {event.action}: route {{{weights}}}, "
                              f"champion=v{event.champion}, challenger="
                              f"{'v' + event.challenger if event.challenger else 'none'}; {event.details}")

    def _narrate_window(self, cand: MetricSnapshot, base: MetricSnapshot | None) -> None:
        def err(s: MetricSnapshot | None) -> str:
            error_rate = None if s is None else s.metrics.get("error_rate")
            if s is None or error_rate is None:
                return "error rate n/a (0 labeled)"
            return f"error rate {error_rate:.3f} ({s.labeled} labeled)"
        start = time.strftime("%H:%M:%S", time.localtime(cand.window_start / 1000))
        self.timeline.say(f"window {start}+{(cand.window_end - cand.window_start) // 1000}s: "
                          f"v{self.topology.baseline_version} {err(base)} | "
                          f"v{cand.version} {err(cand)} → {cand.verdict}")


class Simulator:
    """Serving pods and a labeler: predictions now, labels a few seconds later (or never)."""

    def __init__(self, client: EvaluationClient, topology: Topology, weights: Callable[[], dict[str, int]],
                 rng: random.Random) -> None:
        self.client = client
        self.topology = topology
        self.weights = weights
        self.rng = rng
        self.degraded_at: int | None = None
        self.canary_timestamps: list[int] = []
        self.sent: dict[str, int] = {}
        self._labels: list[tuple[float, int, Label]] = []  # (due, tie-breaker, label): Labels don't order
        self._sequence = itertools.count()
        self._route = weights()
        self._route_read = time.monotonic()

    def degrade(self) -> None:
        self.degraded_at = now_ms()

    def _accuracy(self, version: str) -> float:
        if version == self.topology.candidate_version and self.degraded_at is not None:
            return DEGRADED_ACCURACY
        return HEALTHY_ACCURACY

    def _pick_version(self) -> str:
        if time.monotonic() - self._route_read > 0.5:  # a gateway re-reads its route now and then
            self._route, self._route_read = self.weights(), time.monotonic()
        versions = [v for v, w in self._route.items() if w > 0]
        return self.rng.choices(versions, weights=[self._route[v] for v in versions])[0]

    def emit(self, count: int) -> None:
        t = now_ms()
        for _ in range(count):
            version = self._pick_version()
            fraud = self.rng.random() < 0.2
            predicted = fraud if self.rng.random() < self._accuracy(version) else not fraud
            score = self.rng.uniform(0.5, 1.0) if predicted else self.rng.uniform(0.0, 0.4999)
            pid = uuid.uuid4().hex
            self.client.log_prediction(Prediction(
                prediction_id=pid, model=self.topology.model, version=version, timestamp=t, score=score,
                latency_ms=self.rng.lognormvariate(2.5 if version == self.topology.baseline_version else 2.7, 0.4),
                features={"amount": round(self.rng.lognormvariate(3.5, 1.0), 2),
                          "merchant_risk": self.rng.random(), "hour": float(self.rng.randrange(24))},
                segment={"country": self.rng.choice(["DE", "FR", "US", "BR"])},
            ))
            self.sent[version] = self.sent.get(version, 0) + 1
            if version == self.topology.candidate_version:
                self.canary_timestamps.append(t)
            if self.rng.random() >= LABEL_LOSS:
                due = time.monotonic() + self.rng.uniform(*LABEL_DELAY_S)
                label = Label(prediction_id=pid, model=self.topology.model, timestamp=t, label=fraud)
                heapq.heappush(self._labels, (due, next(self._sequence), label))

    def release_labels(self) -> None:
        now = time.monotonic()
        while self._labels and self._labels[0][0] <= now:
            label = heapq.heappop(self._labels)[2]
            self.client.log_label(Label(label.prediction_id, label.model, now_ms(), label.label))


def next_step(elapsed_s: float, rolled_back_s: float | None, *, timeout_s: float,
              after_rollback_s: float) -> str | None:
    """What the demo's loop does `elapsed_s` after traffic started, the rollback applied at
    `rolled_back_s` (None: not yet): "done" once the rollback is `after_rollback_s` old, "timeout"
    when no rollback came within `timeout_s`, None to go on. Keeping things running after the
    rollback (--keep-running) does not count toward the timeout, which bounds the wait for it."""
    if rolled_back_s is not None:
        return "done" if elapsed_s - rolled_back_s >= after_rollback_s else None
    return "timeout" if elapsed_s > timeout_s else None


def _git_log(repo: Path) -> list[str]:
    result = subprocess.run(["git", "-C", str(repo), "log", "--format=%h %s"], capture_output=True, text=True)
    return result.stdout.splitlines()


def run_demo(settings: Settings, *, json_output: bool = False, workdir: Path | None = None,
             topology_path: Path | None = None, timeout_s: float = 150.0, degrade_after_s: float = 25.0,
             rate_per_s: int = PREDICTIONS_PER_S, seed: int = 7, after_rollback_s: float = AFTER_ROLLBACK_S,
             status_port: int | None = None) -> int:
    """Run the demo; 0 when the rollback happened and the registry and route agree with it.
    `after_rollback_s`: how long everything keeps running after the rollback (to look at the
    status page); `status_port`: the worker's status page (None: a free port, 0: none)."""
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.mlflow_registry import MlflowRegistry, register_demo_versions

    out = sys.stderr if json_output else sys.stdout
    # This machine may have no way out; MLflow's usage telemetry would only wait on the network.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    timeline = Timeline(out)
    topology_path = (topology_path or default_topology()).resolve()  # the components run in the workdir
    topology = load_topology(topology_path)
    model, base_v, cand_v = topology.model, topology.baseline_version, topology.candidate_version
    temporary = workdir is None  # removed at the end when the demo succeeds, kept (with the logs) otherwise
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mle-stream-demo-"))
    elif workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"--workdir {workdir} is not empty: the demo registers fresh model versions there")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()  # the components run in it: every path handed to them is absolute
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    # The worker signs with a key pair of its own, as in production; the actuator lists its public key.
    keys_dir = workdir / "keys"
    generate_key_pair(DEMO_KEY_ID, keys_dir)
    gitops_dir = workdir / "gitops"

    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(bootstrap_servers(settings, embedded=True))  # its own, unless given one
        ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=settings.kafka_security)
        timeline.say(f"broker ready at {redact_servers(bootstrap)}; workdir {workdir}")

        versions = register_demo_versions(tracking_uri, model, 2, workdir / "mlartifacts")
        if versions != [base_v, cand_v]:
            raise ConfigError(f"{topology_path}: expects versions {base_v} and {cand_v}, MLflow registered {versions}")
        registry = MlflowRegistry(tracking_uri)
        registry.set_alias(model, "champion", base_v)
        registry.set_alias(model, "challenger", cand_v)
        routing = GitOpsRouting(gitops_dir, manifest_template=topology.routing.manifest,
                                service_template=topology.routing.service,
                                namespace=topology.routing.namespace, gateway=topology.routing.gateway)
        routing.init_route(model, {base_v: 90, cand_v: 10})
        timeline.say(f"MLflow {redact_uri(tracking_uri)}: {model} v{base_v} = champion, v{cand_v} = challenger; "
                     f"route {topology.routing.manifest.format(model=model)} committed with v{base_v} 90%, v{cand_v} "
                     f"10%")

        # Without the caller's keys: MLE_SIGNING_KEY next to the demo's key file would be an error.
        # Nor MLE_OUTPUT_FORMAT: the demo's watcher reads the outputs as mle-stream writes them by default.
        env = {name: value for name, value in os.environ.items() if name not in (*_KEY_VARIABLES, "MLE_OUTPUT_FORMAT")}
        env.update({"MLE_BOOTSTRAP_SERVERS": bootstrap, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1",
                    "MLE_SIGNING_KEY_FILE": str(keys_dir / f"{DEMO_KEY_ID}.key"),
                    "MLE_VERIFY_KEYS_DIR": str(keys_dir)})
        env.update({f"MLE_TOPIC_{name.upper()}": getattr(settings.topics, name)
                    for name in settings.topics.__dataclass_fields__})
        if status_port is None:
            from mle_stream.broker import free_port

            status_port = free_port()
        components = [
            Component("worker", ["worker", "--topology", str(topology_path), "--status-port", str(status_port)],
                      env, workdir / "worker.log"),
            Component("actuator", ["actuator", "--topology", str(topology_path), "--gitops-repo", str(gitops_dir)],
                      env, workdir / "actuator.log"),
        ]
        for c in components:
            stack.callback(c.stop)
        timeline.say(f"started worker (pid {components[0].process.pid}) and actuator "
                     f"(pid {components[1].process.pid}); logs in {workdir}")
        status_url = f"http://127.0.0.1:{status_port}/" if status_port else None
        if status_url:
            timeline.say(f"status page: {status_url} (the worker serves it; --keep-running keeps it up after the end)")

        watcher = Watcher(bootstrap, settings.topics, topology, timeline, settings.kafka_security)
        watcher.start()
        stack.callback(watcher.join, 5)
        stack.callback(watcher.stop_event.set)

        client = EvaluationClient(bootstrap, topics=settings.topics, linger_ms=100, security=settings.kafka_security)
        simulator = Simulator(client, topology, lambda: routing.get_weights(model), random.Random(seed))
        timeline.say(f"simulating {rate_per_s} predictions/s; labels arrive {LABEL_DELAY_S[0]}-{LABEL_DELAY_S[1]} s "
                     f"later, {LABEL_LOSS:.0%} never; v{cand_v} degrades after {degrade_after_s:.0f} s")

        start = time.monotonic()
        rolled_back_at: float | None = None
        failure = ""
        tick = 0.05
        while True:
            elapsed = time.monotonic() - start
            if simulator.degraded_at is None and elapsed >= degrade_after_s:
                simulator.degrade()
                timeline.say(f"simulator: v{cand_v} degrades — accuracy {HEALTHY_ACCURACY:.0%} → "
                             f"{DEGRADED_ACCURACY:.0%}")
            simulator.emit(int(rate_per_s * tick) + (1 if random.random() < (rate_per_s * tick) % 1 else 0))
            simulator.release_labels()
            if rolled_back_at is None and any(e.action == "ROLLBACK" and e.status is RolloutStatus.APPLIED
                                              for e in list(watcher.seen.events)):
                rolled_back_at = elapsed
            dead = [c for c in components if not c.alive()]
            if dead:
                failure = f"the {dead[0].name} exited with status {dead[0].process.returncode}:\n{dead[0].tail()}"
                break
            step = next_step(elapsed, rolled_back_at, timeout_s=timeout_s, after_rollback_s=after_rollback_s)
            if step == "timeout":
                failure = f"no rollback within {timeout_s:.0f} s"
            if step is not None:
                break
            time.sleep(tick)
        client.close()
        stats = client.stats

        # Read the end state back from the systems themselves, not from what we expect.
        aliases = registry.aliases(model)
        weights = routing.get_weights(model)
        seen = watcher.seen
        rollback = next((c for c in seen.commands if c.kind.value == "ROLLBACK"), None)
        degraded_at = simulator.degraded_at
        summary: dict[str, Any] = {
            "rollback_issued": rollback is not None,
            "detected_after_s": round((rollback.issued_at - degraded_at) / 1000,
                                      3) if rollback and degraded_at else None,
            "canary_events_before_rollback": (sum(1 for t in simulator.canary_timestamps if t < rollback.issued_at)
                                              if rollback else len(simulator.canary_timestamps)),
            "degraded_canary_events_before_rollback": (
                sum(1 for t in simulator.canary_timestamps if degraded_at <= t < rollback.issued_at)
                if rollback and degraded_at else None),
            "champion_alias": aliases.get("champion"),
            "challenger_alias": aliases.get("challenger"),
            "route_weights": weights,
            "route_commits": _git_log(gitops_dir),
            "predictions_sent": simulator.sent,
            "client": {"sent_records": stats.sent_records, "sent_messages": stats.sent_messages,
                       "dropped": stats.dropped_queue_full + stats.dropped_delivery_failed},
            "windows_judged": sum(1 for s in seen.snapshots
                                  if s.role == "candidate" and s.segment is None and s.status == "CLOSED"),
            "commands": [wire.to_json_dict(c) for c in seen.commands],
            "rollout_events": [wire.to_json_dict(e) for e in seen.events],
            "workdir": str(workdir),
            "status_page": status_url,
        }
        applied = any(e.status is RolloutStatus.APPLIED and e.action == "ROLLBACK" for e in seen.events)
        consistent = (aliases.get("champion") == base_v and aliases.get("challenger") is None
                      and weights.get(base_v) == 100 and weights.get(cand_v, 0) == 0)
        ok = rollback is not None and applied and consistent and not failure
        summary["ok"] = ok
        if failure:
            summary["failure"] = failure
        if ok:
            timeline.say(f"done: v{cand_v} rolled back {summary['detected_after_s']} s after it degraded; "
                         f"registry champion=v{aliases.get('champion')}, challenger=none; route {weights}")
        else:
            timeline.say(f"FAILED: {failure or 'the rollback did not leave the registry and the route consistent'}; "
                         f"aliases {aliases}, route {weights}")
    if temporary and ok:
        shutil.rmtree(workdir, ignore_errors=True)
        summary["workdir"] = None
    elif temporary:
        timeline.say(f"kept {workdir} (logs, MLflow, GitOps repository) to look into")
    if json_output:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if ok else 1

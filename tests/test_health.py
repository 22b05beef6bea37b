"""The liveness and readiness rules (mle_stream.health) on a hand-driven clock, and the HTTP server
that answers them next to the metrics. The worker and the actuator as processes: test_health_live.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mle_stream.errors import ConfigError
from mle_stream.health import ActuatorHealth, HealthSettings, WorkerHealth
from mle_stream.telemetry import serve

P0, P1 = ("mle.predictions", 0), ("mle.predictions", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(clock: Clock, **kwargs: Any) -> WorkerHealth:
    return WorkerHealth(checkpoint_max_age_s=90, stall_after_s=300, heartbeat_max_age_s=60, agent_grace_s=5,
                        clock=clock, **kwargs)


def running(clock: Clock) -> WorkerHealth:
    """A worker whose agent runs and whose partitions 0 and 1 are restored, nothing waiting."""
    h = worker(clock)
    h.agent_started()
    h.restored([0, 1])
    h.heartbeat({P0: 10, P1: 20}, {P0: 10, P1: 20}, {}, True)
    return h


def failing(probe: Any) -> dict[str, str]:
    return {name: c.detail for name, c in probe.checks.items() if not c.ok}


def test_a_fresh_worker_is_alive_but_not_ready() -> None:
    h = worker(Clock())
    assert h.liveness().ok
    assert set(failing(h.readiness())) == {"started", "partitions"}


def test_a_running_restored_worker_is_alive_and_ready() -> None:
    h = running(Clock())
    assert h.liveness().ok and h.readiness().ok


def test_a_rebalance_makes_it_unready_until_restored() -> None:
    clock = Clock()
    h = running(clock)
    h.rebalancing()
    clock.now += 30
    assert h.liveness().ok
    assert "rebalancing since 30 s ago" in failing(h.readiness())["partitions"]
    h.restored([1])
    assert h.readiness().ok


def test_the_agent_dead_for_longer_than_the_grace_fails_liveness() -> None:
    clock = Clock()
    h = running(clock)
    h.agent_crashed(SystemExit("boom"))
    h.agent_stopped()
    clock.now += 5  # Faust's supervisor replaces an actor at once: 5 s is the grace
    assert h.liveness().ok
    clock.now += 0.5
    detail = failing(h.liveness())["agent"]
    assert "stopped 6 s ago" in detail and "1 crash(es), the last: SystemExit: boom" in detail
    assert not h.readiness().ok


def test_an_agent_restarted_by_faust_is_alive_and_its_crash_counted() -> None:
    clock = Clock()
    h = running(clock)
    h.agent_crashed(RuntimeError("bad batch"))
    h.agent_stopped()
    h.agent_started()
    clock.now += 60
    h.heartbeat({}, {}, {}, True)
    assert h.liveness().ok
    assert "RuntimeError: bad batch" in h.liveness().checks["agent"].detail
    metrics = {m.name: m for m in h.collect()}
    assert metrics["mle_stream_agent_crashes"].samples[0].value == 1
    assert metrics["mle_stream_agent_running"].samples[0].value == 1


def test_the_wrapped_agent_reports_its_crash_but_not_a_cancellation() -> None:
    import asyncio

    h = worker(Clock())

    async def crashing(stream: Any) -> None:
        raise RuntimeError("in the agent")

    async def cancelled(stream: Any) -> None:
        raise asyncio.CancelledError()

    with pytest.raises(RuntimeError):
        asyncio.run(h.watch_agent(crashing)(None))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(h.watch_agent(cancelled)(None))
    metrics = {m.name: m for m in h.collect()}
    assert metrics["mle_stream_agent_crashes"].samples[0].value == 1
    assert metrics["mle_stream_agent_running"].samples[0].value == 0
    assert h.watch_agent(crashing).__name__ == "crashing"  # Faust names agents after their function


def test_a_silent_event_loop_fails_liveness_after_the_bound() -> None:
    clock = Clock()
    h = running(clock)
    clock.now += 60
    assert h.liveness().ok
    clock.now += 1
    assert "no heartbeat from the event loop for 61 s" in failing(h.liveness())["event_loop"]


def test_unsaved_input_older_than_the_bound_fails_liveness() -> None:
    clock = Clock()
    h = running(clock)
    h.heartbeat({P0: 10}, {P0: 10}, {0: 1000.0, 1: 1050.0}, True)
    clock.now = 1090.0
    assert h.liveness().checks["checkpoints"].ok  # 90 s: at the bound
    clock.now = 1091.0  # computed when asked: it grows without a heartbeat (the event loop's rule fails too)
    assert "partition 0 holds input processed 91 s ago" in failing(h.liveness())["checkpoints"]
    ages = {s.labels["partition"]: s.value for s in
            {m.name: m for m in h.collect()}["mle_stream_checkpoint_age_seconds"].samples}
    assert ages == {"0": 91.0, "1": 41.0}
    # A checkpoint of partition 0 is written: only partition 1's input is unsaved, 41 s old.
    h.heartbeat({P0: 10}, {P0: 10}, {1: 1050.0}, True)
    assert h.liveness().ok and "41 s (partition 1)" in h.liveness().checks["checkpoints"].detail


def test_an_idle_clean_worker_never_fails_on_checkpoints() -> None:
    clock = Clock()
    h = running(clock)
    for _ in range(100):
        clock.now += 30
        h.heartbeat({P0: 10}, {P0: 10}, {}, True)
    assert h.liveness().ok
    ages = [s.value for s in {m.name: m for m in h.collect()}["mle_stream_checkpoint_age_seconds"].samples]
    assert ages == [0.0, 0.0]


def test_checkpoints_off_after_a_failed_batch_fail_liveness_at_once() -> None:
    h = running(Clock())
    h.heartbeat({P0: 10}, {P0: 10}, {0: 1000.0}, False)
    assert "writes no checkpoint again" in failing(h.liveness())["checkpoints"]


def test_a_position_stuck_with_input_waiting_fails_after_the_bound() -> None:
    clock = Clock()
    h = running(clock)
    h.heartbeat({P0: 10, P1: 20}, {P0: 15, P1: 20}, {}, True)  # 5 waiting in P0 from now on
    clock.now += 300
    h.heartbeat({P0: 10, P1: 20}, {P0: 16, P1: 20}, {}, True)
    assert h.liveness().ok
    clock.now += 1
    detail = failing(h.liveness())["consumer"]
    assert "mle.predictions[0] at offset 10 with 6 waiting since 301 s ago" in detail and "[1]" not in detail
    stalled = {s.labels["partition"]: s.value for s in
               {m.name: m for m in h.collect()}["mle_stream_consumer_stalled"].samples}
    assert stalled == {"0": 1.0, "1": 0.0}


def test_catching_up_a_backlog_is_not_a_stall() -> None:
    clock = Clock()
    h = running(clock)
    for i in range(200):  # a million messages behind, advancing a little every 2 s for 400 s
        clock.now += 2
        h.heartbeat({P0: 10 + i}, {P0: 1_000_000}, {}, True)
    assert h.liveness().ok


def test_an_idle_partition_is_not_a_stall() -> None:
    clock = Clock()
    h = running(clock)
    for _ in range(200):
        clock.now += 2
        h.heartbeat({P0: 10}, {P0: 10}, {}, True)  # nothing waiting
    h.heartbeat({P0: 10}, {P0: 11}, {}, True)  # a message arrives: its wait starts now
    clock.now += 2
    assert h.liveness().ok


def test_a_partition_paused_on_purpose_is_not_a_stall_until_it_resumes() -> None:
    clock = Clock()
    h = running(clock)
    for _ in range(200):  # paused for 400 s while its labels catch up, a backlog waiting
        clock.now += 2
        h.heartbeat({P0: 10}, {P0: 1_000}, {}, True, paused={P0})
    assert h.liveness().ok
    h.heartbeat({P0: 10}, {P0: 1_000}, {}, True)  # resumed: its stall clock starts now
    clock.now += 300
    h.heartbeat({P0: 10}, {P0: 1_000}, {}, True)
    assert h.liveness().ok
    clock.now += 1
    assert "consumer" in failing(h.liveness())


def test_an_unknown_high_watermark_is_not_a_stall() -> None:
    clock = Clock()
    h = running(clock)
    h.heartbeat({P0: 10}, {P0: None}, {}, True)
    clock.now += 1000
    h.heartbeat({P0: 10}, {P0: None}, {}, True)
    assert h.liveness().checks["consumer"].ok


def test_restoring_after_a_rebalance_is_not_a_stall() -> None:
    clock = Clock()
    h = running(clock)
    h.rebalancing()
    for _ in range(300):  # ten minutes restoring a large state, input waiting meanwhile
        clock.now += 2
        h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    assert h.liveness().ok
    h.restored([0])
    clock.now += 300
    h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    assert h.liveness().ok  # 300 s unmoved since it is ready again: at the bound
    clock.now += 1
    h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    assert "consumer" in failing(h.liveness())


def test_a_rebalance_restarts_the_stall_clock() -> None:
    clock = Clock()
    h = running(clock)
    h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    clock.now += 200
    h.rebalancing()
    h.restored([0])
    h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    clock.now += 200
    h.heartbeat({P0: 10}, {P0: 15}, {}, True)
    assert h.liveness().ok  # 200 s unmoved since the rebalance, not 400


def test_bad_bounds_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="stall_after_s"):
        WorkerHealth(checkpoint_max_age_s=90, stall_after_s=0)
    with pytest.raises(ValueError, match="stall_after_s"):
        ActuatorHealth(stall_after_s=-1)


def test_settings_default_to_three_intervals_with_a_floor_and_read_the_environment() -> None:
    assert HealthSettings.from_env(30.0, {}) == HealthSettings(checkpoint_max_age_s=120.0, stall_after_s=300.0)
    assert HealthSettings.from_env(60.0, {}).checkpoint_max_age_s == 180.0
    assert HealthSettings.from_env(30.0, {"MLE_HEALTH_CHECKPOINT_MAX_AGE": "10m", "MLE_HEALTH_STALL_AFTER": "45"}) \
        == HealthSettings(checkpoint_max_age_s=600.0, stall_after_s=45.0)
    with pytest.raises(ConfigError, match="MLE_HEALTH_STALL_AFTER must be a duration > 0.*'soon'"):
        HealthSettings.from_env(30.0, {"MLE_HEALTH_STALL_AFTER": "soon"})


# -- the actuator -------------------------------------------------------------------------------------


def test_the_actuator_is_ready_once_its_loop_runs_with_partitions_assigned() -> None:
    clock = Clock()
    h = ActuatorHealth(stall_after_s=300, clock=clock)
    assert h.liveness().ok and set(failing(h.readiness())) == {"started", "partitions"}
    h.loop_started()
    h.assigned([0, 1])
    assert h.readiness().ok
    h.revoked()
    assert set(failing(h.readiness())) == {"partitions"}


def test_the_actuator_loop_that_stopped_or_hangs_fails_liveness() -> None:
    clock = Clock()
    h = ActuatorHealth(stall_after_s=300, clock=clock)
    h.loop_started()
    clock.now += 300
    assert h.liveness().ok
    clock.now += 1
    assert "has not come round for 301 s" in failing(h.liveness())["loop"]
    h.loop_beat()
    assert h.liveness().ok
    h.loop_stopped(KeyError("x"))
    assert failing(h.liveness()) == {"loop": "the consume loop has stopped: KeyError: 'x'"}


def test_the_actuator_metrics_tell_loop_and_last_command_age() -> None:
    clock = Clock()
    h = ActuatorHealth(stall_after_s=300, clock=clock)
    values = {m.name: m.samples[0].value for m in h.collect()}
    assert values["mle_stream_actuator_loop_alive"] == 0
    h.loop_started()
    clock.now += 7
    values = {m.name: m.samples[0].value for m in h.collect()}
    assert values == {"mle_stream_actuator_loop_alive": 1, "mle_stream_actuator_last_command_age_seconds": 7}
    h.command_processed()
    clock.now += 3
    h.loop_stopped(None)
    values = {m.name: m.samples[0].value for m in h.collect()}
    assert values == {"mle_stream_actuator_loop_alive": 0, "mle_stream_actuator_last_command_age_seconds": 3}


# -- HTTP ---------------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_metrics_server_answers_probes_with_503_and_the_reason() -> None:
    clock = Clock()
    h = ActuatorHealth(stall_after_s=300, clock=clock)
    registry = CollectorRegistry()
    port = serve(registry, _free_port(), "127.0.0.1", h)
    assert port is not None
    base = f"http://127.0.0.1:{port}"
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["status"] == "fail"
    assert json.loads(body)["checks"]["started"] == {"ok": False, "detail": "the consume loop has not started yet"}
    h.loop_started()
    h.assigned([0])
    assert get(base + "/readyz")[0] == 200 and get(base + "/livez")[0] == 200
    h.loop_stopped(RuntimeError("gone"))
    for path in ("/livez", "/healthz", "/readyz"):
        status, body = get(base + path)
        assert status == 503, path
        assert json.loads(body)["checks"]["loop"]["detail"] == "the consume loop has stopped: RuntimeError: gone"
    status, metrics = get(base + "/metrics")
    assert status == 200 and "mle_stream_actuator_loop_alive 0.0" in metrics


def _free_port() -> int:
    from mle_stream.broker import free_port

    return free_port()

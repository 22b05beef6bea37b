"""A real metrics-and-probes server (mle_stream.health) whose checks pass or fail, for the tests that
check what the manifests' and the Compose file's probes ask."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from mle_stream.health import ActuatorHealth, start_server


def serving_probes(ok: bool) -> Iterator[int]:
    """The port of a real metrics-and-probes server whose probes answer 200 (ok) or 503."""
    health = ActuatorHealth()
    if ok:
        health.loop_started()
        health.assigned([0])
    else:
        health.loop_stopped(RuntimeError("down"))
    server = start_server(CollectorRegistry(), 0, "127.0.0.1", health)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()

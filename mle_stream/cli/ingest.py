"""`mle-stream ingest`: KServe inference-logger CloudEvents (and labels) over HTTP, published."""

from __future__ import annotations

import argparse
import logging
import textwrap

from mle_stream.cli.common import Subcommands, add_command, wait_for_signal
from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.redact import redact_servers

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)


def add_parser(sub: Subcommands) -> None:
    p = add_command(
        sub, "ingest", "receive KServe inference-logger CloudEvents (and labels) over HTTP, publish them",
        textwrap.fill("An HTTP endpoint for KServe's inference logger, so predictions reach mle-stream without code "
                      "in the serving pod: point an InferenceService's `logger: {mode: all, url: http://HOST:PORT/}` "
                      "here. Each call's request and response events are paired by ce-id and mapped by the model's "
                      "topology (its ingest: section) to one prediction per instance, with id <ce-id>:<index>; "
                      "labelers may POST labels as JSON to /labels. /healthz and /metrics (Prometheus) are served "
                      "on the same port. See docs/ingest.md.", 100, break_on_hyphens=False)
        + "\n\nexamples:\n  mle-stream ingest -t topologies/ --port 8080\n"
          "  curl -X POST localhost:8080/labels -d '{\"prediction_id\": \"order-7:0\", \"model\": "
          "\"fraud-detector\", \"timestamp\": 1796612400500, \"label\": 1}'")
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="topology file(s) or directories: each model's ingest: section says which InferenceService "
                        "feeds it and how its payloads map to predictions")
    p.add_argument("--port", type=int, default=8080, metavar="PORT", help="port to listen on (default 8080)")
    p.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS",
                   help="address to listen on (default 0.0.0.0: every interface, for the logger to reach)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="larger posts are refused with 413 (default 1048576)")
    p.add_argument("--max-pending", type=int, default=10_000, metavar="N",
                   help="halves (request or response) waiting for their counterpart at most; the oldest is dropped "
                        "to make room (default 10000)")
    p.add_argument("--max-pending-bytes", type=int, default=64 << 20, metavar="N",
                   help="bytes of the bodies waiting at most; parsed, they take a few times that in memory "
                        "(default 67108864)")
    p.add_argument("--pair-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="an unpaired half is dropped and counted after this long (default 30)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.client import EvaluationClient
    from mle_stream.core.topology import load_topologies
    from mle_stream.ingest import IngestServer, Limits, RunningServer
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be a port number 0-65535, got {args.port}")
    if min(args.max_body_bytes, args.max_pending, args.max_pending_bytes) < 1 or not args.pair_timeout > 0:
        raise ConfigError("--max-body-bytes, --max-pending, --max-pending-bytes and --pair-timeout must be above 0")
    limits = Limits(args.max_body_bytes, args.max_pending, args.max_pending_bytes, args.pair_timeout)
    topologies = load_topologies(args.topology)
    security = settings.kafka_security
    with bootstrap_servers(settings) as bootstrap:
        wait_for_broker(bootstrap, security=security)
        ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
        with EvaluationClient(bootstrap, topics=settings.topics, security=security) as client:
            ingest = IngestServer(topologies, client, limits)
            try:
                server = RunningServer(ingest, args.bind, args.port)
            except OSError as exc:
                raise ConfigError(f"cannot serve on {args.bind}:{args.port}: {exc}") from exc
            logging.getLogger("mle_stream").info(
                "ingest for %s on http://%s:%d/ (labels: /labels) -> %s", ", ".join(sorted(topologies)),
                args.bind, server.port, redact_servers(bootstrap))
            stop = wait_for_signal()
            while not stop.wait(0.5):
                pass
            server.stop()
    return 0

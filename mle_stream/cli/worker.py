"""`mle-stream worker`: the stream worker, with its status page, metrics and probes."""

from __future__ import annotations

import argparse
import logging

from mle_stream.cli.common import (
    Subcommands,
    add_command,
    add_embedded_broker_argument,
    add_metrics_arguments,
    check_broker,
    choose_metrics_bind,
    choose_metrics_port,
)
from mle_stream.config import STATUS_PORT, WORKER_METRICS_PORT, Settings, read
from mle_stream.errors import ConfigError
from mle_stream.redact import redact_servers
from mle_stream.wire import client_for

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  MLE_SIGNING_KEY_FILE=keys/worker.key MLE_VERIFY_KEYS_DIR=keys/ \\
      mle-stream worker -t topologies/
  mle-stream --log-format json worker -t topologies/fraud-detector-canary.yaml --status-port 8077"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "worker", "join labels to predictions, keep windowed metrics, emit rollback commands",
                    "Run the stream worker (Faust). It reads predictions and labels, joins them by "
                    "prediction_id, keeps event-time windows of accuracy, error rate and latency per model "
                    "version, judges each closed window of the candidate against the baseline, and publishes "
                    "metric snapshots, signed commands and dead letters.", EXAMPLES)
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="a topology YAML file or a directory of them (repeatable)")
    p.add_argument("--status-port", type=int, metavar="PORT", default=None,
                   help=f"serve the live status page at http://BIND:PORT/ (default: MLE_STATUS_PORT, else "
                        f"{STATUS_PORT}; 0: none)")
    p.add_argument("--status-bind", metavar="ADDRESS", default="127.0.0.1",
                   help="address the status page is served on (default 127.0.0.1: this host only; 0.0.0.0: "
                        "every interface)")
    add_embedded_broker_argument(p)
    add_metrics_arguments(p, "worker", WORKER_METRICS_PORT)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.aliases import resolve_with_mlflow
    from mle_stream.core.topology import load_topologies
    from mle_stream.health import WorkerHealth
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker
    from mle_stream.keys import signer_from_settings
    from mle_stream.stream.app import run_worker
    from mle_stream.stream.metrics import WorkerMetrics
    from mle_stream.verification import verifier_for

    check_broker(args, settings)
    metrics_port = choose_metrics_port(args, settings, WORKER_METRICS_PORT)
    status_port = _status_port(args.status_port)
    health = WorkerHealth.from_env(settings.checkpoint_interval_s)
    topologies = resolve_with_mlflow(load_topologies(args.topology), settings.mlflow_tracking_uri)
    signer_from_settings(settings)  # a key problem fails here, not in Faust
    verify = verifier_for(settings)  # also: no key to verify with, no worker
    metrics = WorkerMetrics()
    security = settings.kafka_security
    with bootstrap_servers(settings, embedded=args.embedded_broker) as bootstrap:
        wait_for_broker(bootstrap, security=security)
        ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
        logging.getLogger("mle_stream").info("worker for %s on %s (%s)", ", ".join(sorted(topologies)),
                                             redact_servers(bootstrap), security.describe())
        if status_port:
            from mle_stream.status.server import start_status_page

            start_status_page(bootstrap, settings.topics, {name: [c.metric for c in t.checks]
                                                           for name, t in topologies.items()},
                              status_port, args.status_bind, health=health, verify=verify, metrics=metrics,
                              security=security, registry=client_for(settings.schema_registry))
        run_worker(settings, bootstrap, topologies, loglevel=args.log_level, metrics_port=metrics_port,
                   metrics_bind=choose_metrics_bind(args), health=health, metrics=metrics)
    return 0


def _status_port(flag: int | None) -> int:
    raw = read("MLE_STATUS_PORT").strip()
    if flag is None and raw and not raw.isdigit():
        raise ConfigError(f"MLE_STATUS_PORT must be a port number 0-65535 (0: no status page), got {raw!r}")
    port = flag if flag is not None else int(raw) if raw else STATUS_PORT
    if not 0 <= port <= 65535:
        raise ConfigError(f"--status-port / MLE_STATUS_PORT must be a port number 0-65535 (0: no status page), "
                          f"got {port}")
    return port

"""`mle-stream actuator`: apply commands to the routing and the MLflow registry."""

from __future__ import annotations

import argparse
import logging
import threading

from mle_stream.cli.common import (
    Subcommands,
    add_command,
    add_embedded_broker_argument,
    add_metrics_arguments,
    add_routing_arguments,
    check_broker,
    choose_metrics_bind,
    choose_metrics_port,
    routing_options,
    wait_for_signal,
)
from mle_stream.config import ACTUATOR_METRICS_PORT, Settings, read
from mle_stream.errors import ConfigError
from mle_stream.wire import CONFLUENT, ConfluentOutputs, SchemaRegistryClient, client_for

EXTRA = "actuator"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream actuator -t topologies/ --gitops-repo ../gitops
  mle-stream actuator -t topologies/ --kubeconfig ~/.kube/config --dry-run"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "actuator", "apply commands to the routing and the MLflow registry",
                    "Consume commands, verify their signature, route traffic (each topology's routing.backend: "
                    "a GitOps repository of Gateway API HTTPRoute manifests, or an HTTPRoute, Istio VirtualService "
                    "or KServe InferenceService patched on the Kubernetes API server), move MLflow aliases, and "
                    "publish a rollout event for each.", EXAMPLES)
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="topology YAML file(s) or directories: they say where each model's route lives")
    add_routing_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="report what would change (status DRY_RUN), change nothing")
    p.add_argument("--notify-webhook", metavar="URL", default=None,
                   help="POST a Slack-compatible message to this incoming webhook for every rollback and every "
                        "FAILED or REJECTED command (default: MLE_NOTIFY_WEBHOOK; none when both are empty); "
                        "only verified commands are described, the others summarized without their content")
    p.add_argument("--notify-limit", type=int, metavar="N", default=None,
                   help="at most N posts per model and kind (action and status) per --notify-window; the rest are "
                        "summarized in one post when the window ends (default: MLE_NOTIFY_LIMIT, else "
                        "5; 0: summaries only)")
    p.add_argument("--notify-window", metavar="DURATION", default=None,
                   help="the rate limit's window: 10m, 1h, 90s or seconds (default: MLE_NOTIFY_WINDOW, else 10m)")
    add_embedded_broker_argument(p)
    add_metrics_arguments(p, "actuator", ACTUATOR_METRICS_PORT)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.actuator.backends import build_routing
    from mle_stream.actuator.notify import CountingUnverified, notifier_for
    from mle_stream.actuator.runner import run_actuator_loop
    from mle_stream.actuator.service import Actuator
    from mle_stream.core.topology import load_topologies
    from mle_stream.health import ActuatorHealth
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker
    from mle_stream.keys import verifier_from_settings
    from mle_stream.mlflow_registry import MlflowRegistry
    from mle_stream.telemetry import ActuatorMetrics, serve
    from mle_stream.verification import trusting

    check_broker(args, settings)
    metrics_port = choose_metrics_port(args, settings, ACTUATOR_METRICS_PORT)
    health = ActuatorHealth.from_env()
    verifier = verifier_from_settings(settings)
    verify = trusting(verifier)
    metrics = ActuatorMetrics()
    limit, window_s = _notify_rate(args)
    try:
        notifier = notifier_for(args.notify_webhook or settings.notify_webhook, verify=verify, limit=limit,
                                window_s=window_s)
    except ValueError as exc:
        raise ConfigError(f"--notify-webhook / MLE_NOTIFY_WEBHOOK: {exc}") from None
    notifier = CountingUnverified(notifier, verify,
                                  metrics.unverified_commands.labels(settings.topics.commands, "actuator").inc)
    topologies = load_topologies(args.topology)
    routing = build_routing(topologies, routing_options(args))
    actuator = Actuator(routing, MlflowRegistry(settings.mlflow_tracking_uri), verifier, dry_run=args.dry_run)
    logging.getLogger("mle_stream").info("actuator accepts commands signed by %s", ", ".join(verifier.key_ids))
    stop = wait_for_signal()
    registry = client_for(settings.schema_registry)
    if registry is not None:  # a command waiting for the registry gives up on a signal: it is read again
        def close_on_stop(client: SchemaRegistryClient = registry) -> None:
            stop.wait()
            client.close()

        threading.Thread(target=close_on_stop, daemon=True).start()
    framing = None
    if settings.output_format == CONFLUENT:
        assert registry is not None  # Settings requires the registry with this format
        framing = ConfluentOutputs(registry, {settings.topics.rollout_events: "RolloutEvent"})
    try:
        security = settings.kafka_security
        with bootstrap_servers(settings, embedded=args.embedded_broker) as bootstrap:
            wait_for_broker(bootstrap, security=security)
            ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
            serve(metrics.registry, metrics_port, choose_metrics_bind(args), health)
            run_actuator_loop(actuator, bootstrap, settings.topics, stop, group_id=settings.actuator_group,
                              notifier=notifier, metrics=metrics, health=health, security=security,
                              registry=registry, framing=framing)
    finally:
        notifier.close()
    return 0


def _notify_rate(args: argparse.Namespace) -> tuple[int, float]:
    """(posts, window in seconds) of the webhook's rate limit, from the flags, else the environment."""
    from mle_stream.actuator.notify import DEFAULT_LIMIT, DEFAULT_WINDOW_S
    from mle_stream.config import duration_ms

    raw_limit = args.notify_limit if args.notify_limit is not None else read("MLE_NOTIFY_LIMIT").strip()
    raw_window = args.notify_window or read("MLE_NOTIFY_WINDOW").strip()
    try:
        limit = int(raw_limit) if raw_limit != "" else DEFAULT_LIMIT
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"--notify-limit / MLE_NOTIFY_LIMIT must be a whole number >= 0 (posts per model and kind "
                          f"per window; 0: summaries only), got {raw_limit!r}")
    window_s = (duration_ms(raw_window, "--notify-window / MLE_NOTIFY_WINDOW", "10m, 1h or 90s") / 1000
                if raw_window else DEFAULT_WINDOW_S)
    return limit, window_s

"""What several commands share: the subcommand parser with its examples and environment help, the
broker and metrics flags, waiting for a signal, progress lines."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from mle_stream.actuator.backends import RoutingOptions
from mle_stream.config import Settings, environment_help, read
from mle_stream.errors import ConfigError
from mle_stream.redact import redact_servers

Subcommands = argparse._SubParsersAction  # what ArgumentParser.add_subparsers returns


def epilog(examples: str | None) -> str:
    """The end of a command's --help: its examples, then the environment variables."""
    return f"{examples}\n\n{environment_help()}" if examples else environment_help()


def add_command(sub: Subcommands, name: str, help_text: str, description: str,
                examples: str | None = None) -> argparse.ArgumentParser:
    """A (sub)command's parser. `examples`: its `examples:` block, unless the description ends with it."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description,
                                                     epilog=epilog(examples),
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_routing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --gitops-repo, --kubeconfig and --kube-context to `parser` (read by routing_options)."""
    group = parser.add_argument_group(
        "routing backends",
        "Each topology's routing.backend says where its model's traffic split lives: gitops (HTTPRoute "
        "manifests committed to --gitops-repo) or gateway-api / istio / kserve (an HTTPRoute, "
        "VirtualService or InferenceService patched on the API server). The Kubernetes API server is "
        "reached through --kubeconfig / --kube-context when given, else through the in-cluster service "
        "account (running in a pod), else through the default kubeconfig ($KUBECONFIG or ~/.kube/config).",
    )
    group.add_argument("--gitops-repo", type=Path, metavar="DIR", default=None,
                       help="git checkout holding the route manifests (created if missing); pushed to 'origin' if "
                            "set. Required when a topology uses routing.backend: gitops (the default)")
    group.add_argument("--kubeconfig", type=Path, metavar="FILE", default=None,
                       help="kubeconfig file for the gateway-api, istio and kserve backends "
                            "(default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
    group.add_argument("--kube-context", metavar="NAME", default=None,
                       help="kubeconfig context to use (default: the file's current-context)")


def routing_options(args: argparse.Namespace) -> RoutingOptions:
    return RoutingOptions(gitops_repo=args.gitops_repo, kubeconfig=args.kubeconfig, kube_context=args.kube_context)


def add_embedded_broker_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedded-broker", action="store_true",
                   help="start the embedded in-memory broker for this process instead of connecting to "
                        "MLE_BOOTSTRAP_SERVERS (same as MLE_BOOTSTRAP_SERVERS=embedded; needs mle-stream[embedded]). "
                        "Its topics vanish with the process: for trying things out on one machine only")


def check_broker(args: argparse.Namespace, settings: Settings) -> None:
    """The worker's and the actuator's first check: a broker to use, given one way only."""
    from mle_stream.kafka import configured_servers

    servers = configured_servers(settings, embedded=args.embedded_broker)
    if args.embedded_broker and servers is not None:
        raise ConfigError(f"--embedded-broker asks for a broker of this process's own, but MLE_BOOTSTRAP_SERVERS "
                          f"names {redact_servers(servers)}: drop one of the two")


def add_metrics_arguments(p: argparse.ArgumentParser, component: str, default_port: int) -> None:
    p.add_argument("--metrics-port", type=int, metavar="PORT", default=None,
                   help=f"serve the {component}'s Prometheus metrics at http://BIND:PORT/metrics (default: "
                        f"MLE_METRICS_PORT, else {default_port}; 0: none). A port in use is logged, and the "
                        f"{component} runs without metrics")
    p.add_argument("--metrics-bind", metavar="ADDRESS", default=None,
                   help="address the metrics and the probes (/livez, /readyz, /healthz) are served on (default: "
                        "MLE_METRICS_BIND, else 0.0.0.0: every interface, for Prometheus and the kubelet to reach; "
                        "127.0.0.1 keeps them on this host)")


def choose_metrics_port(args: argparse.Namespace, settings: Settings, default_port: int) -> int:
    port: int = next(p for p in (args.metrics_port, settings.metrics_port, default_port) if p is not None)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port must be a port number 0-65535 (0: no metrics), got {port}")
    return port


def choose_metrics_bind(args: argparse.Namespace) -> str:
    return str(args.metrics_bind or read("MLE_METRICS_BIND").strip() or "0.0.0.0")


def wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def progress(text: str) -> None:
    """A progress line of a long-running command, on stderr: stdout stays the result (--json)."""
    print(f"mle-stream: {text}", file=sys.stderr, flush=True)

"""Build the actuator's RoutingBackend from topology files and command-line flags.

Each topology's `routing:` section names where its model's traffic split lives (backend
`gitops`, `gateway-api`, `istio` or `kserve`, see mle_stream/core/topology.py); this module turns
those sections into one adapter per model behind `RoutingByModel`. The flags the adapters need
(`--gitops-repo`, `--kubeconfig`, `--kube-context`) live here too, so every command that routes
traffic offers the same ones.

The Kubernetes client is imported only when a topology uses a Kubernetes backend: a GitOps-only
actuator neither pays for it nor needs a cluster configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mle_stream.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from mle_stream.actuator.ports import RoutingBackend
    from mle_stream.core.topology import Topology

KUBERNETES_BACKENDS = ("gateway-api", "istio", "kserve")


def add_routing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --gitops-repo, --kubeconfig and --kube-context to `parser` (see build_routing)."""
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


# Flags that say where one model's route lives, for commands that may run without a topology
# (mle-stream actuate): the topology's `routing` keys.
ROUTE_FLAGS = ("backend", "namespace", "name", "service", "subset", "host", "manifest", "gateway")


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and the other `routing:` keys as flags, instead of a topology file."""
    group = parser.add_argument_group(
        "route from flags (instead of --topology)",
        "The command's model's routing section, as flags: the same keys and defaults as a topology's "
        "`routing:` (docs/topologies.md). Templates take {model} and {version}.")
    group.add_argument("--backend", choices=("gitops", "gateway-api", "istio", "kserve"),
                       help="where the model's traffic split lives")
    group.add_argument("--namespace", help="namespace of the route object (default: default)")
    group.add_argument("--name", help="gateway-api, istio, kserve: the object's name template (default: {model})")
    group.add_argument("--service", help="gitops, gateway-api: Service of one version (default: {model}-v{version})")
    group.add_argument("--subset", help="istio: DestinationRule subset of one version (default: v{version})")
    group.add_argument("--host", help="istio: destination host of a new route entry (default: {model})")
    group.add_argument("--manifest", help="gitops: manifest path in the repository (default: routes/{model}.yaml)")
    group.add_argument("--gateway", help="gitops: parentRef of a new manifest (default: ml-gateway)")


def topology_from_flags(args: argparse.Namespace, model: str, baseline: str, candidate: str) -> Topology:
    """A topology holding only the route the flags describe, for one model and its two versions;
    it goes through the topology parser, so the flags are checked exactly as a `routing:` section."""
    import yaml

    from mle_stream.core.topology import parse_topology

    routing = {key: getattr(args, key) for key in ROUTE_FLAGS if getattr(args, key, None) is not None}
    text = yaml.safe_dump({"model": model, "task": "binary", "baseline": {"version": baseline},
                           "candidate": {"version": candidate}, "routing": routing}, sort_keys=False)
    return parse_topology(text, source="the route flags")


def build_routing(topologies: Mapping[str, Topology], args: argparse.Namespace) -> RoutingBackend:
    """One RoutingBackend per model, from its topology's routing section; ConfigError when flags are missing.

    Models on a Kubernetes backend share one API client, so one connection pool serves them all.
    """
    # Imported here, not at the top: the CLI imports this module to build its parser, and parsing
    # flags should not pay for the Kafka client the runner pulls in.
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.actuator.runner import RoutingByModel

    gitops_repo: Path | None = getattr(args, "gitops_repo", None)
    needs_git = sorted(model for model, t in topologies.items() if t.routing.backend == "gitops")
    if needs_git and gitops_repo is None:
        sources = ", ".join(f"{topologies[m].source} ({m})" for m in needs_git)
        raise ConfigError(
            f"--gitops-repo DIR is required: routing.backend is gitops (the default) in {sources}; give the "
            "GitOps checkout, or set routing.backend to gateway-api, istio or kserve in those topologies"
        )
    api_client: ApiClient | None = None
    backends: dict[str, RoutingBackend] = {}
    for model, topology in topologies.items():
        target = topology.routing
        if target.backend == "gitops":
            assert gitops_repo is not None  # checked above
            backends[model] = GitOpsRouting(gitops_repo, manifest_template=target.manifest,
                                            service_template=target.service, namespace=target.namespace,
                                            gateway=target.gateway)
            continue
        if target.backend not in KUBERNETES_BACKENDS:
            raise ConfigError(f"{topology.source}: routing.backend {target.backend!r} is not one of "
                              f"gitops, {', '.join(KUBERNETES_BACKENDS)}")
        if api_client is None:
            api_client = kubernetes_api_client(getattr(args, "kubeconfig", None), getattr(args, "kube_context", None))
        backends[model] = _kubernetes_backend(topology, api_client)
    return RoutingByModel(backends)


def _kubernetes_backend(topology: Topology, api_client: ApiClient) -> RoutingBackend:
    from kubernetes.client import CustomObjectsApi

    from mle_stream.actuator.kubernetes_routing import GatewayAPIRouting, IstioRouting, KServeRouting

    target, api = topology.routing, CustomObjectsApi(api_client)
    try:
        if target.backend == "gateway-api":
            return GatewayAPIRouting(api, namespace=target.namespace, name_template=target.name,
                                     service_template=target.service)
        if target.backend == "istio":
            return IstioRouting(api, namespace=target.namespace, name_template=target.name,
                                host_template=target.host, subset_template=target.subset)
        # KServe does not name versions: the InferenceService's annotation says which revision is which,
        # and the topology's versions stand in when it has none (see KServeRouting).
        fallback = {"latest": topology.candidate_version, "previous": topology.baseline_version}
        return KServeRouting(api, namespace=target.namespace, name_template=target.name,
                             default_versions={k: v for k, v in fallback.items() if v})
    except ValueError as exc:
        raise ConfigError(f"{topology.source}: routing: {exc}") from exc


def kubernetes_api_client(kubeconfig: Path | None, context: str | None) -> ApiClient:
    """An ApiClient from the kubeconfig when one is named, else in-cluster, else the default kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig is not None or context is not None:
        try:
            return config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None, context=context)
        except Exception as exc:  # the loader raises ConfigException, OSError and plain Exceptions alike
            where = str(kubeconfig) if kubeconfig else "the default kubeconfig ($KUBECONFIG or ~/.kube/config)"
            raise ConfigError(f"cannot load Kubernetes config from {where}"
                              f"{f' (context {context!r})' if context else ''}: {exc}") from exc
    configuration: Any = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except ConfigException as in_cluster:
        try:
            return config.new_client_from_config()
        except Exception as exc:
            raise ConfigError(
                f"no Kubernetes configuration: not running in a pod ({in_cluster}) and the default kubeconfig "
                f"could not be loaded ({exc}); pass --kubeconfig FILE (and --kube-context NAME)"
            ) from exc

"""Build the actuator's RoutingBackend from topology files and RoutingOptions.

Each topology's `routing:` section names where its model's traffic split lives (backend
`gitops`, `gateway-api`, `istio` or `kserve`, see mle_stream/core/topology/); this module turns
those sections into one adapter per model behind `RoutingByModel`. RoutingOptions says how the
adapters reach the Git checkout and the API server; the CLI builds it from its flags.

The Kubernetes client is imported only when a topology uses a Kubernetes backend: a GitOps-only
actuator neither pays for it nor needs a cluster configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mle_stream.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from mle_stream.actuator.ports import RoutingBackend
    from mle_stream.core.topology import Topology

KUBERNETES_BACKENDS = ("gateway-api", "istio", "kserve")


@dataclass(frozen=True)
class RoutingOptions:
    """How the adapters reach what they change; the CLI fills it from the flags of the same names.

    gitops_repo: the Git checkout holding the route manifests (`--gitops-repo`), needed only when a
    topology routes through gitops. kubeconfig, kube_context: the Kubernetes client configuration
    (`--kubeconfig`, `--kube-context`); without either, in-cluster, else the default kubeconfig.
    """

    gitops_repo: Path | None = None
    kubeconfig: Path | None = None
    kube_context: str | None = None


def topology_for_route(routing: Mapping[str, str], model: str, baseline: str, candidate: str, *,
                       source: str) -> Topology:
    """A topology holding only `routing` (a topology's `routing:` keys), for one model and its two
    versions; it goes through the topology parser, so the keys are checked exactly as a `routing:`
    section. `source` names where the keys came from in its errors."""
    import yaml

    from mle_stream.core.topology import parse_topology

    text = yaml.safe_dump({"model": model, "task": "binary", "baseline": {"version": baseline},
                           "candidate": {"version": candidate}, "routing": dict(routing)}, sort_keys=False)
    return parse_topology(text, source=source)


def build_routing(topologies: Mapping[str, Topology], options: RoutingOptions) -> RoutingBackend:
    """One RoutingBackend per model, from its topology's routing section; ConfigError when an option is missing.

    Models on a Kubernetes backend share one API client, so one connection pool serves them all.
    """
    # Imported here, not at the top: importing this module for RoutingOptions should not pull in the
    # Kafka client the runner needs.
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.actuator.runner import RoutingByModel

    gitops_repo = options.gitops_repo
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
            api_client = kubernetes_api_client(options.kubeconfig, options.kube_context)
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

"""RoutingBackends that patch a model's traffic split on the Kubernetes API server.

Three adapters, one per kind of object that can hold a split, all through the official client's
CustomObjectsApi:

- GatewayAPIRouting: a Gateway API HTTPRoute (gateway.networking.k8s.io/v1, httproutes); the
  weights are those of the backendRefs of its first rule, one per version (httproute.py, shared
  with the GitOps adapter).
- IstioRouting: an Istio VirtualService (networking.istio.io/v1, virtualservices; v1 is served by
  Istio 1.22 and later, pass api_version="v1beta1" for older meshes); the weights are those of
  `spec.http[0].route[]`, entries `{destination: {host, subset}, weight}`, one subset per version.
- KServeRouting: a KServe InferenceService (serving.kserve.io/v1beta1, inferenceservices); its
  `spec.predictor.canaryTrafficPercent` is the share of the latest revision, the rest goes to the
  previously rolled-out one. See the class for how versions map to those two revisions.

The route object must exist (the deployment creates it); mle-stream only patches it, so a typo in
a model name fails loudly instead of creating a route nobody serves.

Durability: `set_weights` sends the weights and the annotations `mle-stream.io/last-command-id`,
`mle-stream.io/last-reason` and `mle-stream.io/last-command-issued-at` in ONE patch, so the
command is recorded exactly when the weights are, and `last_applied` reads it back. The patch
carries the resourceVersion read just before (optimistic concurrency): a 409 Conflict means
someone else changed the object in between, and the whole read-decide-patch step runs again on
the fresh object.

Patches are JSON merge patches (application/merge-patch+json), which replace a list as a whole:
the adapters send the complete list they mean (all rules, all route entries), built from the
object they read, never a partial one. Custom resources do not support strategic merge patches
at all (the API server answers 415), and the kmock emulator the tests run against merges plain
dicts and replaces lists just like a merge patch, so tests and clusters see the same semantics.

Failures: 404 (no such object) and 401/403 (no permission) fail at once; 409, 429, 5xx,
connection errors and timeouts are retried `attempts` times in all, waiting `base_delay_s`,
then twice as long each time up to `max_delay_s`; then ActuationError says how many attempts
failed and the last cause. Every error names the model, the object (kind, namespace/name) and,
for a change, the weights it was to set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import urllib3
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from mle_stream.actuator.httproute import (
    GROUP as GATEWAY_GROUP,
)
from mle_stream.actuator.httproute import (
    KIND as HTTPROUTE_KIND,
)
from mle_stream.actuator.httproute import (
    PLURAL as HTTPROUTE_PLURAL,
)
from mle_stream.actuator.httproute import (
    VERSION as GATEWAY_VERSION,
)
from mle_stream.actuator.httproute import (
    VERSIONS_ANNOTATION,
    HTTPRouteWeights,
    annotations_of,
    applied_marker,
    check_model_template,
    check_version_template,
    command_annotations,
    first_rule_entries,
    is_object_name,
    read_whole_percent,
    version_from_template,
    versions_annotation,
)
from mle_stream.actuator.ports import check_weights, describe_weights, version_order
from mle_stream.core.commands import AppliedMarker
from mle_stream.errors import ActuationError
from mle_stream.retry import Backoff, RetriesExhausted, retrying

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# 409: someone changed the object since it was read; 429: the API server sheds load; 5xx: it
# (or etcd, or a webhook) failed. All of these may succeed when tried again.
_RETRY_STATUSES = frozenset({409, 429})
_T = TypeVar("_T")


class ObjectRouting:
    """What the three adapters share: naming the object, reading it, patching it with retries.

    A subclass says where the weights live in its kind of object (`_weights_of`) and how to
    change them (`_changes`); this class does the I/O, the idempotency check and the retries.
    """

    group: ClassVar[str]
    plural: ClassVar[str]
    kind: ClassVar[str]

    def __init__(
        self,
        api: CustomObjectsApi,
        *,
        namespace: str = "default",
        name_template: str = "{model}",
        api_version: str,
        attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 8.0,
        timeout_s: float = 10.0,
    ) -> None:
        check_model_template("name_template", name_template)
        if not is_object_name(namespace) or "." in namespace:
            raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
        if not api_version:
            raise ValueError("api_version must be non-empty")
        self.backoff = Backoff(attempts, base_delay_s, max_delay_s)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.api = api
        self.namespace = namespace
        self.name_template = name_template
        self.api_version = api_version
        self.timeout_s = timeout_s

    # -- RoutingBackend ------------------------------------------------------------------------

    def get_weights(self, model: str) -> dict[str, int]:
        return self._weights_of(model, self._retrying(model, "read", lambda: self._read(model)))

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        weights = check_weights(model, weights)
        if not command_id:
            raise ActuationError(f"route of model {model!r}: set_weights needs a command id to record")
        self.object_name(model)  # a bad name is refused before any request too
        return self._retrying(model, f"routing {describe_weights(weights)}",
                              lambda: self._set_once(model, weights, command_id, reason, issued_at))

    def last_applied(self, model: str) -> AppliedMarker | None:
        return applied_marker(self._retrying(model, "read", lambda: self._read(model)), self.where(model))

    # -- beyond the port -----------------------------------------------------------------------

    def object_name(self, model: str) -> str:
        """metadata.name of the model's object; ActuationError when it cannot be a Kubernetes name."""
        name = self.name_template.format(model=model)
        if not is_object_name(name):
            raise ActuationError(
                f"model {model!r}: {self.kind} name {name!r} (from {self.name_template!r}) is not a valid Kubernetes "
                "name: use lower-case letters, digits, '-' and '.' (a DNS-1123 subdomain, at most 253 characters)"
            )
        return name

    def where(self, model: str) -> str:
        """The object, for messages: kind, namespace/name, API group and version, and the model."""
        return (f"{self.kind} {self.namespace}/{self.name_template.format(model=model)} "
                f"({self.group}/{self.api_version}) of model {model!r}")

    # -- what a subclass says ------------------------------------------------------------------

    def _weights_of(self, model: str, obj: dict[str, Any]) -> dict[str, int]:
        """Version -> percent as the object holds it."""
        raise NotImplementedError

    def _changes(self, model: str, obj: dict[str, Any],
                 weights: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
        """(merge patch of the object's spec, extra annotations) that make `obj` route by `weights`."""
        raise NotImplementedError

    # -- I/O -----------------------------------------------------------------------------------

    def _set_once(self, model: str, weights: dict[str, int], command_id: str, reason: str, issued_at: int) -> str:
        obj = self._read(model)
        metadata = obj.get("metadata") or {}
        annotations = annotations_of(obj)
        recorded = command_annotations(command_id, reason, issued_at)
        if (_traffic(self._weights_of(model, obj)) == _traffic(weights)
                and all(annotations.get(name) == value for name, value in recorded.items())):
            # Already applied (e.g. an earlier attempt's patch landed but its answer was lost).
            log.info("%s already routes %s for command %s: nothing to patch", self.where(model),
                     describe_weights(weights), command_id)
            return str(metadata.get("resourceVersion") or "")
        spec_patch, extra_annotations = self._changes(model, obj, weights)
        patch_metadata: dict[str, Any] = {
            "annotations": {**extra_annotations, **recorded},
        }
        if metadata.get("resourceVersion"):
            # A precondition, not a change: the API server answers 409 if the object moved on.
            patch_metadata["resourceVersion"] = metadata["resourceVersion"]
        patched = self.api.patch_namespaced_custom_object(
            self.group, self.api_version, self.namespace, self.plural, self.object_name(model),
            {"metadata": patch_metadata, **spec_patch},
            _content_type=MERGE_PATCH, _request_timeout=self.timeout_s,
        )
        patched_metadata = patched.get("metadata") if isinstance(patched, dict) else None
        revision = str((patched_metadata or {}).get("resourceVersion") or "")
        log.info("%s now routes %s (command %s, resourceVersion %s)", self.where(model), describe_weights(weights),
                 command_id, revision or "?")
        return revision

    def _read(self, model: str) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(
            self.group, self.api_version, self.namespace, self.plural, self.object_name(model),
            _request_timeout=self.timeout_s,
        )
        if not isinstance(obj, dict):
            raise ActuationError(f"{self.where(model)}: the API server returned {type(obj).__name__}, not an object")
        return obj

    def _retrying(self, model: str, action: str, step: Callable[[], _T]) -> _T:
        """Run `step`, again after transient failures (see the module docstring); ActuationError otherwise."""
        where = self.where(model)

        def transient(exc: Exception) -> str | None:
            if isinstance(exc, ApiException):
                status = exc.status or 0
                if status == 404:
                    raise ActuationError(
                        f"{where}: not found (HTTP 404) while {action}: create the {self.kind} with the model's "
                        f"deployment, or fix the routing section of the topology (namespace, name); {_cause(exc)}"
                    ) from exc
                if status in (401, 403):
                    raise ActuationError(
                        f"{where}: the API server refused access (HTTP {status}) while {action}: the actuator's "
                        f"service account needs get and patch on {self.plural}.{self.group} in namespace "
                        f"{self.namespace} (see k8s/base/actuator-role.yaml and docs/deploy-kubernetes.md); "
                        f"{_cause(exc)}"
                    ) from exc
                if status not in _RETRY_STATUSES and status < 500:
                    raise ActuationError(f"{where}: the API server rejected {action} (HTTP {status}): "
                                         f"{_cause(exc)}") from exc
                return _cause(exc)
            if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):  # refused, reset, timed out
                return f"{type(exc).__name__}: {exc}"
            return None

        def on_retry(attempt: int, why: str, delay: float) -> None:
            log.warning("%s: %s failed (attempt %d of %d: %s); retrying in %.2f s", where, action, attempt,
                        self.backoff.attempts, why, delay)

        try:
            return retrying(step, self.backoff, transient, on_retry)
        except RetriesExhausted as exc:
            raise ActuationError(
                f"{where}: {action} failed {exc.attempts} times in a row (transient errors: API server or network); "
                f"last error: {exc.last}; nothing more was changed, deliver the command again once the API server "
                "is healthy", transient=True,
            ) from exc.__cause__


class GatewayAPIRouting(ObjectRouting):
    """Weights of the backendRefs of a Gateway API HTTPRoute's first rule, one per version.

    service_template names the Service of a version newly given a backendRef ({version}, and
    optionally {model}); versions of existing backendRefs come from the annotation
    mle-stream.io/versions or the same template (httproute.py).
    """

    group = GATEWAY_GROUP
    plural = HTTPROUTE_PLURAL
    kind = HTTPROUTE_KIND

    def __init__(self, api: CustomObjectsApi, *, service_template: str = "{model}-v{version}",
                 api_version: str = GATEWAY_VERSION, **options: Any) -> None:
        super().__init__(api, api_version=api_version, **options)
        self._routes = HTTPRouteWeights(service_template)

    def _weights_of(self, model: str, obj: dict[str, Any]) -> dict[str, int]:
        return self._routes.weights(model, obj, self.where(model))

    def _changes(self, model: str, obj: dict[str, Any],
                 weights: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
        new = self._routes.with_weights(model, obj, weights, self.where(model))
        # All rules, not only the first: a merge patch replaces the list whole.
        return ({"spec": {"rules": new["spec"]["rules"]}},
                {VERSIONS_ANNOTATION: annotations_of(new)[VERSIONS_ANNOTATION]})


class IstioRouting(ObjectRouting):
    """Weights of the destinations of an Istio VirtualService's first HTTP route, one subset per version.

    subset_template names a version's DestinationRule subset ({version}, optionally {model});
    a destination whose subset does not match it is an error, not silently dropped. A version
    newly given traffic gets a destination with that subset and the host the route's other
    destinations use (host_template, default the model's Service `{model}`, when there are none).
    """

    group = "networking.istio.io"
    plural = "virtualservices"
    kind = "VirtualService"

    def __init__(self, api: CustomObjectsApi, *, subset_template: str = "v{version}", host_template: str = "{model}",
                 api_version: str = "v1", **options: Any) -> None:
        super().__init__(api, api_version=api_version, **options)
        check_version_template("subset_template", subset_template)
        check_model_template("host_template", host_template)
        self.subset_template = subset_template
        self.host_template = host_template

    def _weights_of(self, model: str, obj: dict[str, Any]) -> dict[str, int]:
        entries = self._versioned_entries(model, obj)
        weights: dict[str, int] = {}
        for i, (version, entry) in enumerate(entries):
            # Istio sends everything to a lone destination without a weight, nothing to an unweighted one among several
            default = 100 if len(entries) == 1 else 0
            weight = read_whole_percent(self.where(model), f"spec.http[0].route[{i}].weight",
                                        entry.get("weight", default))
            weights[version] = weights.get(version, 0) + weight
        return weights

    def _changes(self, model: str, obj: dict[str, Any],
                 weights: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
        entries = self._versioned_entries(model, obj)
        old = dict(entries)
        hosts = {entry["destination"].get("host") for _, entry in entries}
        host = hosts.pop() if len(hosts) == 1 and None not in hosts else self.host_template.format(model=model)
        route: list[dict[str, Any]] = []
        for version in sorted(weights, key=version_order):
            entry = dict(old.get(version) or {
                "destination": {"host": host, "subset": self.subset_template.format(model=model, version=version)},
            })
            entry["weight"] = weights[version]
            route.append(entry)
        http = [dict(h) for h in obj["spec"]["http"]]
        http[0]["route"] = route
        # All HTTP routes, not only the first: a merge patch replaces the list whole.
        return {"spec": {"http": http}}, {}

    def _versioned_entries(self, model: str, obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        where = self.where(model)
        route = first_rule_entries(obj, where, self.kind, "http", "route")
        found: list[tuple[str, dict[str, Any]]] = []
        for i, entry in enumerate(route):
            destination = entry.get("destination") if isinstance(entry, dict) else None
            subset = destination.get("subset") if isinstance(destination, dict) else None
            if not isinstance(subset, str):
                raise ActuationError(f"{where}: spec.http[0].route[{i}] has no destination.subset, so it names no "
                                     f"version; give each version a subset named by {self.subset_template!r}")
            version = version_from_template(self.subset_template, model, subset)
            if version is None:
                raise ActuationError(f"{where}: spec.http[0].route[{i}] subset {subset!r} does not match the subset "
                                     f"template {self.subset_template!r}")
            found.append((version, entry))
        return found


class KServeRouting(ObjectRouting):
    """The canary split of a KServe InferenceService: spec.predictor.canaryTrafficPercent.

    KServe splits traffic between two revisions it does not name by model version: the latest
    ready revision gets canaryTrafficPercent, the previously rolled-out one the rest, and without
    the field the latest gets everything. Which versions those are comes from the annotation
    mle-stream.io/versions on the InferenceService, JSON {"latest": "2", "previous": "1"}, set by
    whoever deploys a revision; when it is absent, `default_versions` (same keys; the CLI passes
    the topology's candidate as latest and baseline as previous).

    Mapping weights onto the field, following KServe's canary rollout docs: the latest version at
    100% promotes (the field is removed, so KServe rolls the latest revision out); the previous
    version at 100% rolls back (canaryTrafficPercent 0 pins traffic to the previous revision);
    anything between is a canary step. Weights naming any other version are refused: KServe has
    no revision to send them to.
    """

    group = "serving.kserve.io"
    plural = "inferenceservices"
    kind = "InferenceService"
    ROLES = ("latest", "previous")

    def __init__(self, api: CustomObjectsApi, *, default_versions: Mapping[str, str] | None = None,
                 api_version: str = "v1beta1", **options: Any) -> None:
        super().__init__(api, api_version=api_version, **options)
        self.default_versions = self._check_roles("default_versions", dict(default_versions or {}))

    def _weights_of(self, model: str, obj: dict[str, Any]) -> dict[str, int]:
        versions = self._versions(model, obj)
        percent = self._canary_percent(model, obj)
        latest, previous = versions["latest"], versions.get("previous")
        if percent is None or percent == 100:
            return {latest: 100, **({previous: 0} if previous else {})}
        if previous is None:
            raise ActuationError(
                f"{self.where(model)}: spec.predictor.canaryTrafficPercent is {percent}, so the previous revision "
                f"serves {100 - percent}%, but no version is known for it: add \"previous\" to annotation "
                f"{VERSIONS_ANNOTATION}"
            )
        return {latest: percent, previous: 100 - percent}

    def _changes(self, model: str, obj: dict[str, Any],
                 weights: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
        versions = self._versions(model, obj)
        latest, previous = versions["latest"], versions.get("previous")
        unknown = sorted(set(weights) - set(versions.values()), key=version_order)
        if unknown:
            raise ActuationError(
                f"{self.where(model)}: cannot route {describe_weights(weights)}: KServe splits traffic only between "
                f"the latest revision (v{latest}) and the previous one ({f'v{previous}' if previous else 'unknown'}), "
                f"so version(s) {', '.join(unknown)} have no revision; update annotation {VERSIONS_ANNOTATION} when "
                "deploying a new revision"
            )
        percent = weights.get(latest, 0)
        if percent < 100 and previous is None:
            raise ActuationError(
                f"{self.where(model)}: cannot route {describe_weights(weights)}: the version of the previous revision "
                f"is unknown; add \"previous\" to annotation {VERSIONS_ANNOTATION}"
            )
        # None removes the field (JSON merge patch): the documented way to promote the latest revision.
        return {"spec": {"predictor": {"canaryTrafficPercent": None if percent == 100 else percent}}}, {}

    def _canary_percent(self, model: str, obj: dict[str, Any]) -> int | None:
        predictor = (obj.get("spec") or {}).get("predictor")
        if not isinstance(predictor, dict):
            raise ActuationError(f"{self.where(model)}: the InferenceService has no spec.predictor")
        value = predictor.get("canaryTrafficPercent")
        if value is None:
            return None
        percent = read_whole_percent(self.where(model), "spec.predictor.canaryTrafficPercent", value)
        if not 0 <= percent <= 100:
            raise ActuationError(f"{self.where(model)}: spec.predictor.canaryTrafficPercent is {percent}, not in [0, "
                                 f"100]")
        return percent

    def _versions(self, model: str, obj: dict[str, Any]) -> dict[str, str]:
        """Role ("latest", "previous") -> version, from the annotation or else the configured default."""
        where = self.where(model)
        parsed = versions_annotation(obj, where)
        if parsed is None:
            versions = self.default_versions
            source = "default_versions (the topology's candidate and baseline)"
        else:
            try:
                versions = self._check_roles(f"annotation {VERSIONS_ANNOTATION}", parsed)
            except ValueError as exc:
                raise ActuationError(f"{where}: {exc}") from exc
            source = f"annotation {VERSIONS_ANNOTATION}"
        if "latest" not in versions:
            raise ActuationError(
                f"{where}: no version known for the latest revision ({source} has none): annotate the "
                f"InferenceService with {VERSIONS_ANNOTATION}='{{\"latest\": \"2\", \"previous\": \"1\"}}' when "
                f"deploying"
            )
        return versions

    @classmethod
    def _check_roles(cls, what: str, versions: Any) -> dict[str, str]:
        if not isinstance(versions, dict) or not set(versions) <= set(cls.ROLES):
            raise ValueError(f"{what} must map \"latest\" and optionally \"previous\" to versions, got {versions!r}")
        if not all(isinstance(v, str) and v for v in versions.values()):
            raise ValueError(f"{what}: versions must be non-empty strings, got {versions!r}")
        if len(set(versions.values())) != len(versions):
            raise ValueError(f"{what}: latest and previous must be different versions, got {versions!r}")
        return dict(versions)


def _traffic(weights: Mapping[str, int]) -> dict[str, int]:
    """Who gets traffic: a version at 0% and a version left out route the same."""
    return {version: percent for version, percent in weights.items() if percent}


def _cause(exc: ApiException) -> str:
    """'HTTP 409 Conflict: <the Status message>' from an ApiException."""
    message = ""
    try:
        body = json.loads(exc.body) if exc.body else None
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    except (TypeError, ValueError):
        message = str(exc.body)[:300]
    return f"HTTP {exc.status} {exc.reason or ''}".rstrip() + (f": {message}" if message else "")

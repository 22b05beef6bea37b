"""Traffic weights in a Gateway API HTTPRoute, shared by the GitOps and the API-server adapters.

An HTTPRoute routes a model by the backendRefs of its first rule, one per version, each with a
`weight`. Which version a backendRef stands for comes from the annotation `mle-stream.io/versions`
(service name -> version, JSON), written with every change, else from the Service name through a
template such as `{model}-v{version}`. Everything else in the route (hostnames, matches, filters,
other rules, extra backendRef fields) is kept as it is.

The same annotations record the last command applied to any route object mle-stream manages, so
the actuator can tell after a crash whether the route step of a command is already done.

Plain dicts in, plain dicts out: this module does no I/O, so a manifest in Git and an object on
the API server are handled by the same code.
"""

from __future__ import annotations

import copy
import json
import re
import string
from typing import Any

from mle_stream.actuator.ports import version_order
from mle_stream.core.commands import AppliedMarker
from mle_stream.errors import ActuationError

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "httproutes"
KIND = "HTTPRoute"
VERSIONS_ANNOTATION = "mle-stream.io/versions"
LAST_COMMAND_ANNOTATION = "mle-stream.io/last-command-id"
LAST_REASON_ANNOTATION = "mle-stream.io/last-reason"
LAST_ISSUED_AT_ANNOTATION = "mle-stream.io/last-command-issued-at"
BACKEND_PORT = 80

# metadata.name of a Kubernetes object must be a DNS-1123 subdomain; checking it before any request
# also keeps a model name from walking out of the GitOps repository through the manifest path.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_object_name(name: str) -> bool:
    """Whether `name` can be a Kubernetes metadata.name (a DNS-1123 subdomain, at most 253 characters)."""
    return isinstance(name, str) and len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def template_fields(template: str) -> set[str]:
    """The `{field}` names a format string uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_version_template(what: str, template: str) -> None:
    """ValueError unless `template` uses {version} and at most {model} besides."""
    fields = template_fields(template)
    if "version" not in fields or not fields <= {"model", "version"}:
        raise ValueError(f"{what} {template!r} must use {{version}} and may use {{model}}, nothing else")


def check_model_template(what: str, template: str) -> None:
    """ValueError unless `template` uses no field but {model}."""
    if not template or not template_fields(template) <= {"model"}:
        raise ValueError(f"{what} {template!r} must be non-empty and may use {{model}}, nothing else")


def version_from_template(template: str, model: str, value: str) -> str | None:
    """Reverse a `{model}`/`{version}` template: the version `value` stands for, None if it does not match."""
    pattern = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name == "model":
            pattern += re.escape(model)
        elif name == "version":
            pattern += r"(?P<version>.+)"
    match = re.fullmatch(pattern, value)
    return match.group("version") if match else None


def annotations_of(obj: dict[str, Any]) -> dict[str, Any]:
    """metadata.annotations of a manifest or object, {} when there are none."""
    metadata = obj.get("metadata") or {}
    return metadata.get("annotations") or {}


def command_annotations(command_id: str, reason: str, issued_at: int) -> dict[str, str | None]:
    """The annotations that record an applied command with its route; issued_at 0 removes the time
    (None deletes an annotation in a merge patch, and is dropped from a manifest)."""
    return {LAST_COMMAND_ANNOTATION: command_id, LAST_REASON_ANNOTATION: reason,
            LAST_ISSUED_AT_ANNOTATION: str(issued_at) if issued_at else None}


def applied_marker(obj: dict[str, Any], where: str) -> AppliedMarker | None:
    """The command the route's annotations record as applied, None when they record none;
    ActuationError when its issued_at annotation is not epoch milliseconds."""
    annotations = annotations_of(obj)
    command = annotations.get(LAST_COMMAND_ANNOTATION)
    if not command:
        return None
    raw = annotations.get(LAST_ISSUED_AT_ANNOTATION) or "0"
    if not isinstance(raw, str) or not raw.isdigit():
        raise ActuationError(f"{where}: annotation {LAST_ISSUED_AT_ANNOTATION} is {raw!r}, not epoch milliseconds; "
                             f"fix or remove it (it dates command {command})")
    return AppliedMarker(str(command), int(raw), f"route ({where}, annotation {LAST_COMMAND_ANNOTATION})")


def versions_annotation(obj: dict[str, Any], where: str) -> Any:
    """The parsed JSON of annotation mle-stream.io/versions, None when absent; ActuationError when not JSON."""
    raw = annotations_of(obj).get(VERSIONS_ANNOTATION)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ActuationError(f"{where}: annotation {VERSIONS_ANNOTATION} is not JSON: {exc}") from exc


def first_rule_entries(obj: dict[str, Any], where: str, kind: str, rules: str, entries: str) -> list[Any]:
    """The list `spec.<rules>[0].<entries>` (HTTPRoute: rules/backendRefs, VirtualService: http/route).

    Only the first rule carries the split: others (a debug route, a mirror) are left as they are.
    """
    spec = obj.get("spec")
    found = spec.get(rules) if isinstance(spec, dict) else None
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise ActuationError(f"{where}: the {kind} needs spec.{rules}[0], a mapping with {entries}")
    listed = found[0].get(entries) or []
    if not isinstance(listed, list):
        raise ActuationError(f"{where}: spec.{rules}[0].{entries} must be a list")
    return listed


def read_whole_percent(where: str, field: str, value: Any) -> int:
    """`value` as a traffic weight, or ActuationError saying which field holds what instead."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ActuationError(f"{where}: {field} is {value!r}, not a whole number")
    return value


class HTTPRouteWeights:
    """Read and rewrite the weights of an HTTPRoute dict; service_template names one version's Service."""

    def __init__(self, service_template: str = "{model}-v{version}") -> None:
        check_version_template("service_template", service_template)
        self.service_template = service_template

    def service_name(self, model: str, version: str) -> str:
        return self.service_template.format(model=model, version=version)

    def version_of_service(self, model: str, service: str) -> str | None:
        """Reverse `service_template`: the version a Service name stands for, None if it does not match."""
        return version_from_template(self.service_template, model, service)

    def weights(self, model: str, route: dict[str, Any], where: str) -> dict[str, int]:
        """Version -> weight of rules[0]; `where` names the route in error messages."""
        weights: dict[str, int] = {}
        for version, ref in self.versioned_refs(model, route, where):
            # Gateway API's default weight is 1
            weight = read_whole_percent(where, f"backendRef {ref['name']!r} weight", ref.get("weight", 1))
            weights[version] = weights.get(version, 0) + weight
        return weights

    def with_weights(self, model: str, route: dict[str, Any], weights: dict[str, int], where: str) -> dict[str, Any]:
        """A copy of `route` routing by `weights`, with the versions annotation rewritten.

        A version that already has a backendRef keeps it (its name, port and any other field), so
        a Service named by hand stays as it is; a new version gets one from the template.
        """
        new = copy.deepcopy(route)
        old_refs = dict(self.versioned_refs(model, new, where))
        refs: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for version in sorted(weights, key=version_order):
            ref = dict(old_refs.get(version) or {"name": self.service_name(model, version), "port": BACKEND_PORT})
            ref["weight"] = weights[version]
            refs.append(ref)
            names[ref["name"]] = version
        metadata = new.get("metadata") or {}
        metadata["annotations"] = metadata.get("annotations") or {}
        metadata["annotations"][VERSIONS_ANNOTATION] = json.dumps(names, sort_keys=True)
        new["metadata"] = metadata
        new["spec"]["rules"][0]["backendRefs"] = refs
        return new

    def versioned_refs(self, model: str, route: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
        """(version, backendRef) for each backendRef of spec.rules[0], or ActuationError saying what is wrong.

        The version comes from the annotation this module writes, else from the name through the
        service template; a backendRef neither explains is an error rather than silently dropped.
        """
        refs = first_rule_entries(route, where, KIND, "rules", "backendRefs")
        names = versions_annotation(route, where) or {}
        if not isinstance(names, dict):
            raise ActuationError(f"{where}: annotation {VERSIONS_ANNOTATION} must map service name -> version")
        found: list[tuple[str, dict[str, Any]]] = []
        for i, ref in enumerate(refs):
            name = ref.get("name") if isinstance(ref, dict) else None
            if not isinstance(ref, dict) or not isinstance(name, str):
                raise ActuationError(f"{where}: spec.rules[0].backendRefs[{i}] has no name")
            version = names.get(name) or self.version_of_service(model, name)
            if version is None:
                raise ActuationError(
                    f"{where}: backendRef {name!r} names no version: it is not in annotation {VERSIONS_ANNOTATION} "
                    f"and does not match the service template {self.service_template!r}"
                )
            found.append((str(version), ref))
        return found

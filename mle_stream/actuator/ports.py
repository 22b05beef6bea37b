"""The two interfaces the actuator acts through, and a stateful in-memory implementation of each.

The actuator core (service.py) knows nothing about Git, Kubernetes or MLflow: it talks to a
`RoutingBackend` (who gets how much traffic) and a `ModelRegistry` (which version holds which
alias, and what is written on each version). One adapter per backend implements these, the way
httpx transports or Flagger routers do; the in-memory ones here are real, stateful backends for
tests and demos, so the core's tests exercise behaviour instead of mock call lists.

Contract shared by every implementation:

- Versions and percents: weights map version -> whole percent in [0, 100], summing to 100.
  `set_weights` replaces the whole mapping; a version left out no longer receives traffic.
- A route must exist before it is read or changed (created by the deployment or `init_route`):
  a typo in a model name fails loudly instead of creating a new route.
- Setting a route to the weights it already has is not an error and changes nothing else.
- Every failure an adapter can hit is raised as `mle_stream.errors.ActuationError`, naming the
  model, version and backend, with the backend's own exception chained as the cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from mle_stream.core.commands import AppliedMarker
from mle_stream.errors import ActuationError


@runtime_checkable
class RoutingBackend(Protocol):
    """Where traffic goes: a Gateway API route, a service-mesh route, a GitOps manifest."""

    def get_weights(self, model: str) -> dict[str, int]:
        """Version -> percent of the model's traffic, as the backend holds it now."""
        ...

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        """Route the model's traffic by `weights`, recording `command_id`, `reason` and the command's
        `issued_at` (epoch ms; 0: not recorded) with the route, in the same write as the weights.

        Returns the revision that now holds the route (a commit sha, a resourceVersion), so the
        rollout event can say exactly where the change lives.
        """
        ...

    def last_applied(self, model: str) -> AppliedMarker | None:
        """The command id and issued_at recorded with the route by the last `set_weights`, None when
        there is none (issued_at 0 when that write recorded none).

        The actuator's idempotency and staleness checks rest on this: it must reflect only changes
        that are durable (committed, pushed, accepted by the API server).
        """
        ...


@runtime_checkable
class ModelRegistry(Protocol):
    """Which version is champion or challenger, and the audit tags written on each version."""

    def aliases(self, model: str) -> dict[str, str]:
        """Alias -> version for every alias the model has; an unset alias is simply absent."""
        ...

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point `alias` at `version`, moving it if another version held it."""
        ...

    def delete_alias(self, model: str, alias: str) -> None:
        """Remove `alias`; removing an alias that is not set is a no-op."""
        ...

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        """Set the given tags on one version (others are left as they are), in the mapping's order."""
        ...

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        """Every tag of one version."""
        ...

    def tag_model(self, model: str, tags: dict[str, str]) -> None:
        """Set the given tags on the registered model itself (others are left as they are)."""
        ...

    def model_tags(self, model: str) -> dict[str, str]:
        """Every tag of the registered model."""
        ...


def check_weights(model: str, weights: Mapping[str, int]) -> dict[str, int]:
    """Return `weights` as a plain dict, or raise ActuationError saying what is wrong with them.

    Every routing adapter calls this so a bad command cannot half-apply on one backend and be
    refused by another.
    """
    if not weights:
        raise ActuationError(f"route of model {model!r}: no weights given; at least one version must get traffic")
    for version, percent in weights.items():
        if not isinstance(version, str) or not version:
            raise ActuationError(f"route of model {model!r}: version {version!r} must be a non-empty string")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ActuationError(
                f"route of model {model!r}: weight of version {version!r} must be a whole percent in [0, 100], "
                f"got {percent!r}"
            )
    total = sum(weights.values())
    if total != 100:
        raise ActuationError(f"route of model {model!r}: weights {dict(weights)} add up to {total}, not 100")
    return dict(weights)


def version_order(version: str) -> tuple[int, int, str]:
    """Sort key: numeric versions in numeric order, then the rest by name (stable manifests, messages)."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def describe_weights(weights: Mapping[str, int]) -> str:
    """'100% -> v1' when one version takes everything, else 'v1 90%, v2 10%' (for messages)."""
    if not weights:
        return "no route"
    full = [v for v, p in weights.items() if p == 100]
    if full:
        return f"100% -> v{full[0]}"
    return ", ".join(f"v{v} {p}%" for v, p in sorted(weights.items(), key=lambda item: version_order(item[0])))


class InMemoryRouting:
    """A RoutingBackend held in a dict, with its history, for tests and demos.

    `routes` seeds the models that have a route (version -> percent). Revisions are "r1", "r2", ...
    per model; `history` keeps every applied change so tests can assert on what happened and in
    which order.
    """

    def __init__(self, routes: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self._weights: dict[str, dict[str, int]] = {}
        self._last_command: dict[str, AppliedMarker] = {}
        self._revision: dict[str, int] = {}
        self.history: list[tuple[str, dict[str, int], str, str]] = []
        for model, weights in (routes or {}).items():
            self.init_route(model, dict(weights))

    def init_route(self, model: str, weights: dict[str, int]) -> str:
        """Create (or reset) the model's route without recording a command."""
        self._weights[model] = check_weights(model, weights)
        self._last_command.pop(model, None)
        self._revision[model] = self._revision.get(model, 0) + 1
        return f"r{self._revision[model]}"

    def get_weights(self, model: str) -> dict[str, int]:
        return dict(self._route(model))

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        current = self._route(model)
        weights = check_weights(model, weights)
        marker = AppliedMarker(command_id, issued_at, f"in-memory route of {model}")
        if current == weights and self._last_command.get(model) == marker:
            return f"r{self._revision[model]}"
        self._weights[model] = weights
        self._last_command[model] = marker
        self._revision[model] += 1
        self.history.append((model, dict(weights), command_id, reason))
        return f"r{self._revision[model]}"

    def last_applied(self, model: str) -> AppliedMarker | None:
        return self._last_command.get(model)

    def _route(self, model: str) -> dict[str, int]:
        try:
            return self._weights[model]
        except KeyError:
            raise ActuationError(
                f"in-memory routing has no route for model {model!r} (known: {sorted(self._weights)}); "
                "create it with init_route first"
            ) from None


class InMemoryRegistry:
    """A ModelRegistry held in dicts, mirroring MLflow's rules for tests and demos.

    `versions` seeds model -> its version numbers. As in MLflow, an alias or a tag can only name a
    version that exists, and an unknown model or version raises ActuationError.
    """

    def __init__(self, versions: Mapping[str, list[str]] | None = None) -> None:
        self._versions: dict[str, dict[str, dict[str, str]]] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._model_tags: dict[str, dict[str, str]] = {}
        for model, numbers in (versions or {}).items():
            for number in numbers:
                self.add_version(model, number)

    def add_version(self, model: str, version: str, tags: Mapping[str, str] | None = None) -> None:
        """Register `version` of `model` (creating the model if needed)."""
        self._versions.setdefault(model, {})[version] = dict(tags or {})
        self._aliases.setdefault(model, {})
        self._model_tags.setdefault(model, {})

    def aliases(self, model: str) -> dict[str, str]:
        self._model(model)
        return dict(self._aliases[model])

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._version(model, version)
        self._aliases[model][alias] = version

    def delete_alias(self, model: str, alias: str) -> None:
        self._model(model)
        self._aliases[model].pop(alias, None)

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        self._version(model, version).update(tags)

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self._version(model, version))

    def tag_model(self, model: str, tags: dict[str, str]) -> None:
        self._model(model)
        self._model_tags[model].update(tags)

    def model_tags(self, model: str) -> dict[str, str]:
        self._model(model)
        return dict(self._model_tags[model])

    def _model(self, model: str) -> dict[str, dict[str, str]]:
        try:
            return self._versions[model]
        except KeyError:
            raise ActuationError(
                f"in-memory registry has no model {model!r} (known: {sorted(self._versions)})"
            ) from None

    def _version(self, model: str, version: str) -> dict[str, str]:
        versions = self._model(model)
        try:
            return versions[version]
        except KeyError:
            raise ActuationError(
                f"in-memory registry: model {model!r} has no version {version!r} (known: {sorted(versions)})"
            ) from None

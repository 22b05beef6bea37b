"""The actuator core against the in-memory ports: every command kind, signatures, idempotency,
resuming after a crash, dry runs and backend failures."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

import mle_stream.actuator as actuator_pkg
from mle_stream.actuator import Actuator, InMemoryRegistry, InMemoryRouting, ModelRegistry, RoutingBackend
from mle_stream.actuator.service import event_id
from mle_stream.core.commands import AppliedMarker, command_id
from mle_stream.core.events import Command, CommandKind, RolloutStatus
from mle_stream.core.signing import Signer, Verifier
from mle_stream.errors import ActuationError
from mle_stream.keys import HMAC_KEY_ID

KEY = b"test-signing-key-0123456789abcde"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
MODEL = "fraud-detector"
NOW = 1_700_000_000_000


def make_command(
    kind: CommandKind = CommandKind.ROLLBACK,
    traffic: dict[str, int] | None = None,
    *,
    baseline: str = "1",
    candidate: str = "2",
    window_end: int = NOW - 60_000,
    signer: Signer | None = SIGNER,
    issued_at: int = NOW,
) -> Command:
    default_traffic = {
        CommandKind.ROLLBACK: {baseline: 100, candidate: 0},
        CommandKind.PROMOTE: {baseline: 0, candidate: 100},
        CommandKind.SET_TRAFFIC: {baseline: 75, candidate: 25},
    }.get(kind, {})
    command = Command(
        command_id=command_id(MODEL, baseline, candidate, kind, "error_rate", NOW - 360_000, window_end),
        kind=kind,
        model=MODEL,
        baseline_version=baseline,
        candidate_version=candidate,
        traffic=default_traffic if traffic is None else traffic,
        reason="error rate of v2 is 4.1% vs 1.0% on v1 over 3 windows",
        rule="error_rate",
        window_start=NOW - 360_000,
        window_end=window_end,
        evidence='{"windows": 3}',
        policy_version="p1",
        issued_at=issued_at,
    )
    return signer.sign(command) if signer else command


@pytest.fixture
def routing() -> InMemoryRouting:
    return InMemoryRouting({MODEL: {"1": 90, "2": 10}})


@pytest.fixture
def registry() -> InMemoryRegistry:
    reg = InMemoryRegistry({MODEL: ["1", "2", "3"]})
    reg.set_alias(MODEL, "champion", "1")
    reg.set_alias(MODEL, "challenger", "2")
    return reg


def make_actuator(routing: RoutingBackend, registry: ModelRegistry, **kwargs: object) -> Actuator:
    return Actuator(routing, registry, VERIFIER, clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


class FailingRouting(InMemoryRouting):
    """A routing backend whose writes fail, as a Git push or an API server can."""

    def __init__(self, routes: dict[str, dict[str, int]], error: Exception) -> None:
        super().__init__(routes)
        self.error = error

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        raise self.error


class FlakyRegistry(InMemoryRegistry):
    """Fails the first `failures` alias writes, then behaves."""

    def __init__(self, failures: int) -> None:
        super().__init__({MODEL: ["1", "2"]})
        self.failures = failures

    def set_alias(self, model: str, alias: str, version: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ActuationError(f"registry unavailable while pointing {alias} of {model} at {version}")
        super().set_alias(model, alias, version)


def test_in_memory_backends_satisfy_the_ports() -> None:
    assert isinstance(InMemoryRouting(), RoutingBackend)
    assert isinstance(InMemoryRegistry(), ModelRegistry)


def test_package_exports_what_it_declares() -> None:
    for name in actuator_pkg.__all__:
        assert getattr(actuator_pkg, name) is not None, name


def test_rollback_routes_back_then_moves_aliases_and_tags(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command()
    event = make_actuator(routing, registry).handle(command)

    assert event.status is RolloutStatus.APPLIED, event.details
    assert routing.get_weights(MODEL) == {"1": 100, "2": 0}
    assert routing.last_applied(MODEL) == AppliedMarker(command.command_id, NOW, f"in-memory route of {MODEL}")
    assert registry.aliases(MODEL) == {"champion": "1"}
    tags = registry.version_tags(MODEL, "2")
    assert tags["mle.verdict"] == "FAIL"
    assert tags["mle.reason"] == command.reason
    assert tags["mle.command_id"] == command.command_id
    assert datetime.fromisoformat(tags["mle.at"]).timestamp() * 1000 == NOW
    assert registry.version_tags(MODEL, "1") == {"mle.command_id": command.command_id, "mle.signed_by": HMAC_KEY_ID}
    assert tags["mle.signed_by"] == HMAC_KEY_ID and f"signed by key {HMAC_KEY_ID}" in event.details
    assert registry.model_tags(MODEL) == {"mle.last_command_id": command.command_id,
                                          "mle.last_command_issued_at": str(NOW)}
    # The event is read back from the backends.
    assert dict(event.route_weights) == {"1": 100, "2": 0}
    assert (event.champion, event.challenger) == ("1", None)
    assert (event.action, event.model, event.reason, event.at) == ("ROLLBACK", MODEL, command.reason, NOW)
    assert event.event_id == event_id(command.command_id, RolloutStatus.APPLIED)
    assert "challenger (v2) removed" in event.details


def test_rollback_changes_the_route_before_the_registry(routing: InMemoryRouting) -> None:
    seen: list[dict[str, int]] = []

    class WatchingRegistry(InMemoryRegistry):
        def set_alias(self, model: str, alias: str, version: str) -> None:
            seen.append(routing.get_weights(model))
            super().set_alias(model, alias, version)

    make_actuator(routing, WatchingRegistry({MODEL: ["1", "2"]})).handle(make_command())
    assert seen == [{"1": 100, "2": 0}]


def test_rollback_keeps_a_challenger_that_is_not_the_candidate(
    routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    registry.set_alias(MODEL, "challenger", "3")
    event = make_actuator(routing, registry).handle(make_command())
    assert event.status is RolloutStatus.APPLIED
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "3"}


def test_set_traffic_changes_weights_and_tags_only(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command(CommandKind.SET_TRAFFIC, {"1": 75, "2": 25})
    event = make_actuator(routing, registry).handle(command)

    assert event.status is RolloutStatus.APPLIED, event.details
    assert routing.get_weights(MODEL) == {"1": 75, "2": 25}
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    tags = registry.version_tags(MODEL, "2")
    assert tags["mle.command_id"] == command.command_id
    assert tags["mle.traffic"] == '{"1": 75, "2": 25}'
    assert "mle.verdict" not in tags
    assert (event.champion, event.challenger) == ("1", "2")


def test_promote_gives_the_candidate_everything(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    event = make_actuator(routing, registry).handle(make_command(CommandKind.PROMOTE))

    assert event.status is RolloutStatus.APPLIED, event.details
    assert routing.get_weights(MODEL) == {"1": 0, "2": 100}
    assert registry.aliases(MODEL) == {"champion": "2"}
    assert registry.version_tags(MODEL, "2")["mle.verdict"] == "PASS"
    assert (event.champion, event.challenger) == ("2", None)


@pytest.mark.parametrize("kind", [CommandKind.HOLD, CommandKind.RETRAIN])
def test_hold_and_retrain_change_nothing(
    kind: CommandKind, routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    event = make_actuator(routing, registry).handle(make_command(kind))

    assert event.status is RolloutStatus.APPLIED
    assert ("held" if kind is CommandKind.HOLD else "retrain requested") in event.details
    assert routing.history == []
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    assert registry.version_tags(MODEL, "2") == {}
    assert dict(event.route_weights) == {"1": 90, "2": 10}


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (make_command(signer=None), "unsigned"),
        (make_command(signer=Signer(HMAC_KEY_ID, b"someone else's secret, same key id")), "does not match"),
        (make_command(signer=Signer("revoked", KEY)), "signed by no known key"),
        (dataclasses.replace(make_command(), traffic={"1": 0, "2": 100}), "does not match"),
        (dataclasses.replace(make_command(), model="payments"), "does not match"),
        (dataclasses.replace(make_command(), signature="deadbeef" * 8), "signed by no known key"),
    ],
    ids=["unsigned", "forged", "unknown-key-id", "tampered-traffic", "tampered-model", "bare-hex"],
)
def test_unverifiable_commands_are_rejected_untouched(
    command: Command, why: str, routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    event = make_actuator(routing, registry).handle(command)

    assert event.status is RolloutStatus.REJECTED
    assert why in event.details
    assert routing.history == [] and routing.get_weights(MODEL) == {"1": 90, "2": 10}
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    assert registry.version_tags(MODEL, "2") == {}
    assert dict(event.route_weights) == {} and event.champion is None


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (make_command(CommandKind.ROLLBACK, {"1": 0, "2": 100}), "baseline 1 100%"),
        (make_command(CommandKind.SET_TRAFFIC, {"1": 70, "2": 20}), "add up to 90"),
        (make_command(CommandKind.SET_TRAFFIC, {}), "needs traffic"),
        (make_command(CommandKind.PROMOTE, baseline="2", candidate="2"), "two different versions"),
    ],
    ids=["rollback-to-candidate", "weights-not-100", "no-traffic", "same-versions"],
)
def test_signed_but_malformed_commands_are_rejected(
    command: Command, why: str, routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    event = make_actuator(routing, registry).handle(command)
    assert event.status is RolloutStatus.REJECTED
    assert why in event.details
    assert routing.history == []


def test_a_redelivered_command_is_skipped(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command()
    actuator = make_actuator(routing, registry)
    assert actuator.handle(command).status is RolloutStatus.APPLIED

    again = actuator.handle(command)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE
    assert "by this actuator" in again.details
    assert again.event_id != event_id(command.command_id, RolloutStatus.APPLIED)
    # After a restart the in-process memory is gone; the backends still know.
    restarted = make_actuator(routing, registry).handle(command)
    assert restarted.status is RolloutStatus.SKIPPED_DUPLICATE
    assert "registry records it" in restarted.details
    assert len(routing.history) == 1


def test_an_old_command_replayed_after_a_newer_one_is_skipped(
    routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    first = make_command()  # roll v2 back to v1
    newer = make_command(CommandKind.SET_TRAFFIC, {"1": 90, "3": 10}, candidate="3")
    make_actuator(routing, registry).handle(first)
    make_actuator(routing, registry).handle(newer)

    replay = make_actuator(routing, registry).handle(first)
    assert replay.status is RolloutStatus.SKIPPED_DUPLICATE
    assert routing.get_weights(MODEL) == {"1": 90, "3": 10}


def test_a_hold_is_skipped_when_seen_twice(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    actuator = make_actuator(routing, registry)
    hold = make_command(CommandKind.HOLD)
    assert actuator.handle(hold).status is RolloutStatus.APPLIED
    assert actuator.handle(hold).status is RolloutStatus.SKIPPED_DUPLICATE


def test_resumes_the_registry_step_after_a_crash(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command()
    # The previous actuator process changed the route, then died before touching the registry.
    routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id=command.command_id, reason="ROLLBACK: crash")

    event = make_actuator(routing, registry).handle(command)
    assert event.status is RolloutStatus.APPLIED
    assert "resumed" in event.details
    assert len(routing.history) == 1  # the route was not written again
    assert registry.aliases(MODEL) == {"champion": "1"}
    assert registry.version_tags(MODEL, "2")["mle.command_id"] == command.command_id


def test_a_registry_failure_fails_and_redelivery_resumes(routing: InMemoryRouting) -> None:
    registry = FlakyRegistry(failures=1)
    command = make_command()

    failed = make_actuator(routing, registry).handle(command)
    assert failed.status is RolloutStatus.FAILED
    assert "registry step failed" in failed.details and "registry unavailable" in failed.details
    assert dict(failed.route_weights) == {"1": 100, "2": 0}  # the truth: the route did move
    assert failed.champion is None

    retried = make_actuator(routing, registry).handle(command)
    assert retried.status is RolloutStatus.APPLIED
    assert "resumed" in retried.details
    assert registry.aliases(MODEL) == {"champion": "1"}


def test_a_routing_failure_fails_and_leaves_the_registry_alone(registry: InMemoryRegistry) -> None:
    routing = FailingRouting({MODEL: {"1": 90, "2": 10}}, ActuationError("git push rejected: non-fast-forward"))
    actuator = make_actuator(routing, registry)
    command = make_command()

    event = actuator.handle(command)
    assert event.status is RolloutStatus.FAILED
    assert "route step failed" in event.details and "non-fast-forward" in event.details
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    assert registry.version_tags(MODEL, "1") == {} and registry.version_tags(MODEL, "2") == {}
    assert dict(event.route_weights) == {"1": 90, "2": 10}
    assert (event.champion, event.challenger) == ("1", "2")
    # A failure is not remembered as applied: once the backend recovers, the command goes through.
    routing.set_weights = InMemoryRouting.set_weights.__get__(routing)  # type: ignore[method-assign]
    assert actuator.handle(command).status is RolloutStatus.APPLIED


def test_an_unexpected_exception_becomes_a_failed_event(registry: InMemoryRegistry) -> None:
    routing = FailingRouting({MODEL: {"1": 90, "2": 10}}, RuntimeError("adapter bug"))
    event = make_actuator(routing, registry).handle(make_command())
    assert event.status is RolloutStatus.FAILED
    assert "RuntimeError: adapter bug" in event.details


def test_only_a_failure_on_transient_errors_is_worth_delivering_again(registry: InMemoryRegistry) -> None:
    routing = FailingRouting({MODEL: {"1": 90, "2": 10}}, ActuationError("API server: 503", transient=True))
    actuator = make_actuator(routing, registry)
    command = make_command()

    down = actuator.apply(command)
    assert down.event.status is RolloutStatus.FAILED and down.retry, down.event.details
    # The same actuator, next command: the advice comes from that command's own error, not the last one's.
    routing.error = ActuationError("API server: 404 no HTTPRoute ml/fraud-detector")
    missing = actuator.apply(command)
    assert missing.event.status is RolloutStatus.FAILED and not missing.retry, missing.event.details
    routing.error = RuntimeError("adapter bug")
    assert not actuator.apply(command).retry
    routing.set_weights = InMemoryRouting.set_weights.__get__(routing)  # type: ignore[method-assign]
    applied = actuator.apply(command)
    assert applied.event.status is RolloutStatus.APPLIED and not applied.retry
    assert applied.event.details.endswith(f"signed by key {HMAC_KEY_ID} (hmac-sha256)"), applied.event.details


def test_an_unknown_version_fails_without_touching_anything(routing: InMemoryRouting) -> None:
    registry = InMemoryRegistry({MODEL: ["1"]})
    event = make_actuator(routing, registry).handle(make_command())
    assert event.status is RolloutStatus.FAILED
    assert "no version '2'" in event.details
    assert routing.history == []


def test_dry_run_reports_and_touches_nothing(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command()
    dry = make_actuator(routing, registry, dry_run=True)

    event = dry.handle(command)
    assert event.status is RolloutStatus.DRY_RUN
    assert "would route 100% -> v1" in event.details and "champion at v1" in event.details
    assert routing.history == [] and registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    assert dict(event.route_weights) == {"1": 90, "2": 10}
    assert dry.handle(command).status is RolloutStatus.DRY_RUN  # not remembered as applied
    assert make_actuator(routing, registry).handle(command).status is RolloutStatus.APPLIED


def test_event_ids_are_deterministic() -> None:
    assert event_id("abc", RolloutStatus.APPLIED) == event_id("abc", RolloutStatus.APPLIED)
    assert event_id("abc", RolloutStatus.APPLIED) != event_id("abc", RolloutStatus.FAILED)
    assert event_id("abc", RolloutStatus.APPLIED) != event_id("abd", RolloutStatus.APPLIED)


def test_a_verifier_without_keys_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="verifier_from_settings"):
        Actuator(InMemoryRouting(), InMemoryRegistry(), Verifier({}))
    with pytest.raises(ValueError, match="verifier_from_settings"):
        Actuator(InMemoryRouting(), InMemoryRegistry(), KEY)  # type: ignore[arg-type]


def test_in_memory_routing_refuses_bad_weights_and_unknown_models(routing: InMemoryRouting) -> None:
    with pytest.raises(ActuationError, match="add up to 110"):
        routing.set_weights(MODEL, {"1": 100, "2": 10}, command_id="c", reason="r")
    with pytest.raises(ActuationError, match="no route for model 'payments'"):
        routing.get_weights("payments")
    assert routing.last_applied("payments") is None


# -- stale commands: expired, or older than the newest applied -------------------------------------

def test_a_set_traffic_replayed_after_a_rollback_is_stale_even_after_a_restart(
    routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    step = make_command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, issued_at=NOW - 60_000)
    rollback = make_command(CommandKind.ROLLBACK, issued_at=NOW - 30_000)
    actuator = make_actuator(routing, registry)
    assert actuator.handle(step).status is RolloutStatus.APPLIED
    assert actuator.handle(rollback).status is RolloutStatus.APPLIED

    for handler in (actuator, make_actuator(routing, registry)):  # the same process, and a restarted one
        replay = handler.handle(step)
        assert replay.status is RolloutStatus.REJECTED, replay.details
        assert replay.details.startswith("STALE: issued at") and rollback.command_id in replay.details
        assert routing.get_weights(MODEL) == {"1": 100, "2": 0}
        assert registry.aliases(MODEL) == {"champion": "1"}
    assert len(routing.history) == 2


def test_the_registry_remembers_the_newest_command_when_the_route_was_reset(
    routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    step = make_command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, issued_at=NOW - 60_000)
    rollback = make_command(CommandKind.ROLLBACK, issued_at=NOW - 30_000)
    make_actuator(routing, registry).handle(step)
    make_actuator(routing, registry).handle(rollback)
    routing.init_route(MODEL, {"1": 100})  # a human resets the route: it records no command any more

    replay = make_actuator(routing, registry).handle(step)
    assert replay.status is RolloutStatus.REJECTED and "registered model's tag" in replay.details
    assert routing.get_weights(MODEL) == {"1": 100}


def test_expired_and_future_commands_are_stale_and_change_nothing(
    routing: InMemoryRouting, registry: InMemoryRegistry
) -> None:
    expired = make_command(issued_at=NOW - SIGNER.ttl_ms)
    ahead = make_command(CommandKind.SET_TRAFFIC, issued_at=NOW + 10 * 60_000)
    hold = make_command(CommandKind.HOLD, issued_at=NOW - SIGNER.ttl_ms - 1)
    for command, why in ((expired, "STALE: expired at"), (ahead, "ahead of the actuator's clock"),
                         (hold, "STALE: expired at")):
        event = make_actuator(routing, registry).handle(command)
        assert event.status is RolloutStatus.REJECTED and why in event.details, event.details
    assert routing.history == [] and registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}
    assert registry.model_tags(MODEL) == {}


def test_a_duplicate_or_a_resumed_command_is_never_stale(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    command = make_command(issued_at=NOW - 60_000)
    assert make_actuator(routing, registry).handle(command).status is RolloutStatus.APPLIED
    # Redelivered after it expired: still recognised as the same command, not refused as stale.
    later = Actuator(routing, registry, VERIFIER, clock=lambda: NOW + 2 * SIGNER.ttl_ms)
    assert later.handle(command).status is RolloutStatus.SKIPPED_DUPLICATE

    # The route step of an older command done, then a crash; delivered again after it expired: finished.
    other_routing, other_registry = InMemoryRouting({MODEL: {"1": 90, "2": 10}}), InMemoryRegistry({MODEL: ["1", "2"]})
    other_routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id=command.command_id, reason="ROLLBACK: crash",
                              issued_at=command.issued_at)
    resumed = Actuator(other_routing, other_registry, VERIFIER, clock=lambda: NOW + 2 * SIGNER.ttl_ms).handle(command)
    assert resumed.status is RolloutStatus.APPLIED and "resumed" in resumed.details


def test_commands_signed_in_the_same_instant_all_apply(routing: InMemoryRouting, registry: InMemoryRegistry) -> None:
    actuator = make_actuator(routing, registry)
    first = make_command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50})
    second = make_command(CommandKind.PROMOTE, window_end=NOW - 1)
    assert first.issued_at == second.issued_at
    assert actuator.handle(first).status is RolloutStatus.APPLIED
    assert actuator.handle(second).status is RolloutStatus.APPLIED
    assert routing.get_weights(MODEL) == {"1": 0, "2": 100}

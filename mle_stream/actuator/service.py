"""The actuator: turns one verified command into routing and registry changes, and says what it did.

The only place in mle-stream that touches the world. The policy decides (commands); this applies,
through the two ports (ports.py), in Flagger's order: traffic back first, then the registry, then
the outcome is returned for the publisher. `apply` never raises: whatever happens becomes a
RolloutEvent, with whether a FAILED one is worth delivering again (it failed on transient errors, a
service down or overloaded, that the adapters' own retries did not outlast), and the event's route
weights and aliases are read back from the backends after the action, so it reports the state of
the world rather than the command's wishes.

Idempotency (commands are redelivered: consumer restarts, re-emitted decisions):

- an in-process memory of the ids applied by this actuator;
- durably, the route records the last command it applied (`last_applied`) and the
  registry step ends by tagging the candidate version `mle.command_id` = the id. The registry is
  written last, so that tag proves the whole command completed: it is skipped as a duplicate.
  When the route records the id but the registry does not, the actuator crashed (or the registry
  failed) between the two steps: only the registry step is run again ("resumed").
- HOLD, RETRAIN and APPROVE change nothing durable, so only the in-process memory covers them.

Freshness (core/commands.py `stale_reason`): a command that is not a duplicate and not being
resumed is REJECTED, changing nothing, when it has expired, was issued too far ahead of this
actuator's clock, or was issued before the newest command already applied to its model. That
newest command is recorded where the actuator's state already lives, so it survives restarts:
with the route (`set_weights` records the command's id and issued_at; `last_applied` reads them)
and on the registered model (tags `mle.last_command_id`, `mle.last_command_issued_at`, written
before the marker tag); the later of the two counts. Signatures are checked first
(core/signing.py); the key id that signed is in every event's details and tagged `mle.signed_by`
on the versions a command changed.

Nothing about one command outlives it but the memory of applied ids. Not thread-safe: one actuator
per command stream, called from one consume loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from mle_stream.actuator.ports import ModelRegistry, RoutingBackend, check_weights, describe_weights
from mle_stream.core.commands import MAX_CLOCK_SKEW_MS, AppliedMarker, iso_utc, newest, stale_reason
from mle_stream.core.events import Command, CommandKind, RolloutEvent, RolloutStatus
from mle_stream.core.signing import Verified, Verifier
from mle_stream.errors import ActuationError, RejectedCommand

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_COMMAND_ID = "mle.command_id"
TAG_VERDICT = "mle.verdict"
TAG_REASON = "mle.reason"
TAG_RULE = "mle.rule"
TAG_AT = "mle.at"
TAG_TRAFFIC = "mle.traffic"
TAG_SIGNED_BY = "mle.signed_by"
# On the registered model: the newest command applied to it (see the module docstring).
TAG_LAST_COMMAND_ID = "mle.last_command_id"
TAG_LAST_ISSUED_AT = "mle.last_command_issued_at"

# Bounds the in-process memory of applied ids; older ids are still covered by the durable check.
_REMEMBERED_IDS = 100_000


@dataclass(frozen=True)
class Outcome:
    """What applying one command did, and whether delivering it again may change that."""

    event: RolloutEvent
    retry: bool = False  # FAILED on transient errors only: the same command delivered again later may apply


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def event_id(command_id: str, status: RolloutStatus) -> str:
    """Deterministic, so a republished outcome of the same command is recognisably the same event."""
    return hashlib.sha256(f"{command_id}\x00{status.value}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Plan:
    """What one command changes; the registry steps run in this order: aliases, `tags`, the
    model's newest-command tags, then on each of `done_versions` the signer and the marker tag,
    the candidate's (`marker_version`) last."""

    route: dict[str, int] | None = None
    champion: str | None = None
    drop_challenger_of: str | None = None
    tags: tuple[tuple[str, dict[str, str]], ...] = ()
    done_versions: tuple[str, ...] = ()
    marker_version: str | None = None
    note: str = ""
    durable: bool = False


@dataclass
class _Observed:
    weights: dict[str, int]
    champion: str | None
    challenger: str | None
    problems: list[str]


class Actuator:
    """Apply signed commands through a RoutingBackend and a ModelRegistry; see the module docstring.

    verifier: the keys commands must be signed with (mle_stream.keys.verifier_from_settings).
    dry_run: report what would change and touch nothing. clock: epoch milliseconds, for expiry,
    the event and the `mle.at` tag. max_clock_skew_ms: how far ahead of `clock` a command may
    have been issued (core/commands.py).
    """

    def __init__(
        self,
        routing: RoutingBackend,
        registry: ModelRegistry,
        verifier: Verifier,
        *,
        dry_run: bool = False,
        clock: Callable[[], int] = epoch_ms,
        max_clock_skew_ms: int = MAX_CLOCK_SKEW_MS,
    ) -> None:
        if not isinstance(verifier, Verifier) or not verifier.key_ids:
            raise ValueError(f"the actuator needs a Verifier with at least one key, got {verifier!r}: build it "
                             "with mle_stream.keys.verifier_from_settings")
        self._routing = routing
        self._registry = registry
        self._verifier = verifier
        self._dry_run = dry_run
        self._clock = clock
        self._max_skew_ms = max_clock_skew_ms
        self._applied: OrderedDict[str, None] = OrderedDict()

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    def apply(self, command: Command) -> Outcome:
        """Apply `command`: what happened, and whether a FAILED one is worth delivering again (see
        Outcome); never raises."""
        signed_by: Verified | None = None
        try:
            signed_by = self._verifier.verify(command)
            outcome = self._apply(command, signed_by)
        except Exception as exc:  # a bug or an adapter breaking its contract: report it, keep consuming
            log.exception("actuator failed on command %s of model %s", command.command_id, command.model)
            outcome = Outcome(self._event(command, RolloutStatus.FAILED, f"unexpected {type(exc).__name__}: {exc}",
                                          self._observe(command.model)))
        event = outcome.event
        if signed_by is not None:  # said here, once, so that every path's event names the signer, a bug's too
            event = replace(event, details=f"{event.details}; signed by key {signed_by.key_id} ({signed_by.algorithm})")
            outcome = Outcome(event, outcome.retry)
        level = logging.WARNING if event.status in (RolloutStatus.FAILED, RolloutStatus.REJECTED) else logging.INFO
        log.log(level, "%s %s of %s (command %s): %s", event.status.value, event.action, event.model,
                event.command_id, event.details)
        return outcome

    def handle(self, command: Command) -> RolloutEvent:
        """Apply `command` and return what happened (`apply` without the retry advice); never raises."""
        return self.apply(command).event

    # -- steps ---------------------------------------------------------------------------------

    def _apply(self, command: Command, signed_by: Verified | None) -> Outcome:
        if signed_by is None:
            # The model name is unverified: read nothing with it either.
            return Outcome(self._event(command, RolloutStatus.REJECTED, f"{self._signature_problem(command)}; "
                                       "nothing was read or changed", _Observed({}, None, None, [])))
        try:
            plan = self._plan(command)
        except RejectedCommand as exc:
            return Outcome(self._event(command, RolloutStatus.REJECTED, f"malformed command: {exc}; nothing was "
                                       "changed", self._observe(command.model)))

        route_last = registry_last = None
        marker: str | None = None
        if plan.durable:
            try:
                route_last = self._routing.last_applied(command.model)
                marker = self._registry.version_tags(command.model, plan.marker_version or "").get(TAG_COMMAND_ID)
                registry_last = _registry_marker(command.model, self._registry.model_tags(command.model))
            except ActuationError as exc:
                return self._failed(command, f"could not check whether it was applied: {exc}", exc)
        applied = newest([route_last, registry_last])
        # Applied here before and not superseded since by a newer command: a redelivery, skipped even once
        # expired. Superseded, it is a replay: stale, as it would be after a restart.
        superseded = applied is not None and command.issued_at < applied.issued_at
        if command.command_id in self._applied and not superseded:
            return self._duplicate(command, "already applied by this actuator")
        route_id = route_last.command_id if route_last else None
        if marker == command.command_id:
            since = "" if route_id == command.command_id else f"; the route has since recorded command {route_id}"
            return self._duplicate(command, f"the registry records it as applied (tag {TAG_COMMAND_ID} on "
                                            f"v{plan.marker_version}){since}")
        # A resumed command is already half applied: finishing it is never stale, whatever its age.
        resume = route_id == command.command_id
        stale = None if resume else stale_reason(command, self._clock(), applied, self._max_skew_ms)
        if stale:
            return Outcome(self._event(command, RolloutStatus.REJECTED, f"{stale}; nothing was changed",
                                       self._observe(command.model)))

        if self._dry_run:
            observed = self._observe(command.model)
            return Outcome(self._event(command, RolloutStatus.DRY_RUN,
                                       self._describe_dry_run(plan, resume, observed.weights), observed))

        done: list[str] = []
        if plan.route is not None and not resume:
            try:
                before = self._routing.get_weights(command.model)
                revision = self._routing.set_weights(
                    command.model, plan.route, command_id=command.command_id, reason=self._route_reason(command),
                    issued_at=command.issued_at,
                )
            except ActuationError as exc:
                return self._failed(command, f"route step failed, registry untouched: {exc}", exc)
            done.append(f"route {describe_weights(before)} => {describe_weights(plan.route)} at revision {revision}")
        elif resume:
            done.append("resumed: the route already records this command (an earlier attempt stopped before the "
                        "registry step)")
        try:
            done.extend(self._registry_step(command, plan, signed_by.key_id))
        except ActuationError as exc:
            done.append(f"registry step failed: {exc}; delivering the command again resumes from the registry step")
            return self._failed(command, "; ".join(done), exc)
        if plan.note:
            done.append(plan.note)
        self._remember(command.command_id)
        return Outcome(self._event(command, RolloutStatus.APPLIED, "; ".join(done), self._observe(command.model)))

    def _signature_problem(self, command: Command) -> str:
        """Why a command did not verify, for its REJECTED event (which reports, never raises)."""
        known = ", ".join(self._verifier.key_ids)
        signature = command.signature if isinstance(command.signature, str) else ""
        if not signature:
            return f"unsigned command: the actuator applies only commands signed by a known key ({known})"
        key_id = signature.split(":")[1] if signature.count(":") == 2 else ""
        if key_id not in self._verifier.key_ids:
            return (f"signed by no known key (known: {known}): the key is unknown or revoked, or the signature is "
                    "not '<algorithm>:<key_id>:<signature>'")
        return (f"signature does not match key {key_id}: the command was forged or changed after signing, or its "
                "fields cannot be signed")

    def _plan(self, command: Command) -> _Plan:
        """What the command changes, or RejectedCommand when it contradicts itself."""
        if not isinstance(command.model, str) or not command.model:
            raise RejectedCommand("model is empty")
        if not command.command_id:
            raise RejectedCommand("command_id is empty")
        kind = command.kind
        if kind is CommandKind.HOLD:
            return _Plan(note="held")
        if kind is CommandKind.APPROVE:
            # The worker acts on approvals (it emits the approved step's command); here the approval
            # is only verified, so the rollout events show who approved what.
            return _Plan(note=f"approval of {describe_weights(dict(command.traffic))} recorded; routing and registry "
                              "change when the worker emits the step's command")
        if kind is CommandKind.RETRAIN:
            return _Plan(note=f"retrain requested for model {command.model} (rule {command.rule or '-'}); no trainer "
                              "is wired to the actuator yet, so routing and registry were left unchanged")
        base, cand = command.baseline_version, command.candidate_version
        if not base or not cand or base == cand:
            raise RejectedCommand(f"{kind.value} needs two different versions, got baseline {base!r} and "
                                  f"candidate {cand!r}")
        traffic = dict(command.traffic)
        if traffic:
            try:
                check_weights(command.model, traffic)
            except ActuationError as exc:
                raise RejectedCommand(f"traffic: {exc}") from None
        at = iso_utc(self._clock())
        if kind is CommandKind.ROLLBACK:
            route = traffic or {base: 100, cand: 0}
            if route.get(base) != 100:
                raise RejectedCommand(f"a ROLLBACK must give baseline {base} 100% of traffic, got {traffic}")
            verdict = {TAG_VERDICT: "FAIL", TAG_REASON: command.reason, TAG_RULE: command.rule, TAG_AT: at}
            return _Plan(route=route, champion=base, drop_challenger_of=cand, tags=((cand, verdict),),
                         done_versions=(base, cand), marker_version=cand, durable=True)
        if kind is CommandKind.PROMOTE:
            route = traffic or {base: 0, cand: 100}
            if route.get(cand) != 100:
                raise RejectedCommand(f"a PROMOTE must give candidate {cand} 100% of traffic, got {traffic}")
            verdict = {TAG_VERDICT: "PASS", TAG_REASON: command.reason, TAG_RULE: command.rule, TAG_AT: at}
            return _Plan(route=route, champion=cand, drop_challenger_of=cand, tags=((cand, verdict),),
                         done_versions=(base, cand), marker_version=cand, durable=True)
        if kind is CommandKind.SET_TRAFFIC:
            if not traffic:
                raise RejectedCommand("a SET_TRAFFIC needs traffic (version -> percent)")
            step = {TAG_TRAFFIC: json.dumps(traffic, sort_keys=True), TAG_REASON: command.reason,
                    TAG_RULE: command.rule, TAG_AT: at}
            return _Plan(route=traffic, tags=((cand, step),), done_versions=(cand,), marker_version=cand, durable=True)
        raise RejectedCommand(f"unknown command kind {kind!r}")

    def _registry_step(self, command: Command, plan: _Plan, signed_by: str) -> list[str]:
        """Aliases, tags, the model's newest command, then the marker tags (see _Plan); every write is
        idempotent, so resuming is safe. `signed_by`: the key id the command was signed with."""
        model, done = command.model, []
        if plan.champion is not None:
            self._registry.set_alias(model, CHAMPION, plan.champion)
            done.append(f"{CHAMPION} -> v{plan.champion}")
        if plan.drop_challenger_of is not None:
            if self._registry.aliases(model).get(CHALLENGER) == plan.drop_challenger_of:
                self._registry.delete_alias(model, CHALLENGER)
                done.append(f"{CHALLENGER} (v{plan.drop_challenger_of}) removed")
        for version, tags in plan.tags:
            self._registry.tag_version(model, version, tags)
        if plan.durable:
            self._registry.tag_model(model, {TAG_LAST_COMMAND_ID: command.command_id,
                                             TAG_LAST_ISSUED_AT: str(command.issued_at)})
        for version in plan.done_versions:
            # The marker last: it is the proof that the whole command completed.
            self._registry.tag_version(model, version, {TAG_SIGNED_BY: signed_by, TAG_COMMAND_ID: command.command_id})
        tagged = sorted({v for v, _ in plan.tags} | set(plan.done_versions))
        if tagged:
            done.append("tagged " + ", ".join(f"v{v}" for v in tagged))
        return done

    @staticmethod
    def _describe_dry_run(plan: _Plan, resume: bool, current: dict[str, int]) -> str:
        would: list[str] = []
        if plan.route is not None and not resume:
            would.append(f"route {describe_weights(plan.route)} (now {describe_weights(current)})")
        if resume:
            would.append("resume the registry step (the route already records this command)")
        if plan.champion is not None:
            would.append(f"point {CHAMPION} at v{plan.champion}")
        if plan.drop_challenger_of is not None:
            would.append(f"remove {CHALLENGER} if it is v{plan.drop_challenger_of}")
        if plan.tags or plan.done_versions:
            keys: dict[str, set[str]] = {}
            for version, tags in plan.tags:
                keys.setdefault(version, set()).update(tags)
            for version in plan.done_versions:
                keys.setdefault(version, set()).update((TAG_SIGNED_BY, TAG_COMMAND_ID))
            would.append("tag " + ", ".join(f"v{v} with {', '.join(sorted(k))}" for v, k in keys.items()))
        if plan.note:
            would.append(f"report: {plan.note}")
        return "dry run, nothing changed; would " + "; ".join(would) if would else "dry run, nothing to change"

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _route_reason(command: Command) -> str:
        rule = f" ({command.rule})" if command.rule else ""
        return f"{command.kind.value}{rule}: {command.reason}"

    def _duplicate(self, command: Command, why: str) -> Outcome:
        self._remember(command.command_id)
        status = RolloutStatus.DRY_RUN if self._dry_run else RolloutStatus.SKIPPED_DUPLICATE
        prefix = "dry run: would skip, " if self._dry_run else "duplicate, nothing changed: "
        return Outcome(self._event(command, status, prefix + why, self._observe(command.model)))

    def _remember(self, command_id: str) -> None:
        if self._dry_run:
            return  # a dry run applies nothing, so it must not make a later live run skip
        self._applied[command_id] = None
        self._applied.move_to_end(command_id)
        while len(self._applied) > _REMEMBERED_IDS:
            self._applied.popitem(last=False)

    def _observe(self, model: str) -> _Observed:
        """The state after the action, read back; a read that fails is reported, not raised."""
        problems: list[str] = []
        weights: dict[str, int] = {}
        aliases: dict[str, str] = {}
        try:
            weights = self._routing.get_weights(model)
        except Exception as exc:  # the event must still be published
            problems.append(f"route could not be read back: {exc}")
        try:
            aliases = self._registry.aliases(model)
        except Exception as exc:
            problems.append(f"aliases could not be read back: {exc}")
        return _Observed(weights, aliases.get(CHAMPION), aliases.get(CHALLENGER), problems)

    def _failed(self, command: Command, details: str, exc: ActuationError) -> Outcome:
        """FAILED, to be delivered again when what failed may recover on its own (exc.transient)."""
        return Outcome(self._event(command, RolloutStatus.FAILED, details, self._observe(command.model)),
                       retry=exc.transient)

    def _event(self, command: Command, status: RolloutStatus, details: str, observed: _Observed) -> RolloutEvent:
        if observed.problems:
            details = f"{details} ({'; '.join(observed.problems)})"
        kind = command.kind
        return RolloutEvent(
            event_id=event_id(command.command_id, status),
            command_id=command.command_id,
            model=command.model,
            action=kind.value if isinstance(kind, CommandKind) else str(kind),
            status=status,
            route_weights=observed.weights,
            champion=observed.champion,
            challenger=observed.challenger,
            reason=command.reason,
            details=details,
            at=self._clock(),
        )


def _registry_marker(model: str, tags: dict[str, str]) -> AppliedMarker | None:
    """The newest command the registered model's tags record, None when they record none."""
    command_id, issued_at = tags.get(TAG_LAST_COMMAND_ID), tags.get(TAG_LAST_ISSUED_AT, "")
    if not command_id:
        return None
    if not issued_at.isdigit():
        raise ActuationError(f"registered model {model!r}: tag {TAG_LAST_ISSUED_AT} is {issued_at!r}, not epoch "
                             f"milliseconds; fix or delete the tag (it records command {command_id})")
    return AppliedMarker(command_id, int(issued_at), f"registered model's tag {TAG_LAST_ISSUED_AT}")

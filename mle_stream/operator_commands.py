"""Operators' commands: a signed command made by hand, published to the commands topic or kept in a file.

An operator overrides the policy with the commands the worker emits (ROLLBACK, PROMOTE,
SET_TRAFFIC), or approves the traffic step a rollout is waiting at (APPROVE, topology
`rollout.approval`; the worker acts on it). `mle-stream command` builds them with
`manual_command`, `mle-stream actuate` applies a command file read with `read_command_file`.

A manual command is signed like the worker's, with the operator's own key (`--key-file`, an
Ed25519 private key whose public half the actuator and the worker list) or the settings' key
(MLE_SIGNING_KEY_FILE / MLE_SIGNING_KEY), so the actuator treats both alike and its rollout event
names the key. It expires after MLE_COMMAND_TTL (1 h by default). Its rule is `manual:<kind>` and
its window is the instant it was issued (window_start = window_end = issued_at), so two separate
operator actions get different ids while the same command delivered twice is still one id.

The command file is the JSON form of a Command: one JSON object with every field of
schemas/command.avsc under its wire name; `kind` is the enum's string (e.g. "SET_TRAFFIC"),
`traffic` an object version -> percent, `window_start`, `window_end`, `issued_at` and
`expires_at` epoch milliseconds, `evidence` a JSON document as a string, `signature` that of
core/signing.py. Editing any field afterwards breaks the signature: the actuator rejects it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind
from mle_stream.errors import BrokerError, InvalidEvent, MleStreamError
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity

if TYPE_CHECKING:  # signing needs cryptography, which the base install (the client) does not have
    from mle_stream.core.signing import Signer

log = logging.getLogger(__name__)


def operator_name() -> str:
    """Who runs this process: the login name (LOGNAME, USER, ...), else the password database's
    entry of the uid (containers often set no USER), else `uid-<uid>` for a uid without an entry
    (an arbitrary `runAsUser`)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no entry for the uid: KeyError up to Python 3.12, OSError since 3.13
        return f"uid-{os.getuid()}"

# The kinds an operator issues, by their command-line name.
OPERATOR_KINDS: dict[str, CommandKind] = {
    "rollback": CommandKind.ROLLBACK,
    "promote": CommandKind.PROMOTE,
    "set-traffic": CommandKind.SET_TRAFFIC,
    "approve": CommandKind.APPROVE,
}
POLICY_VERSION = "manual"
SOURCE = "mle-stream command"
COMMAND_FIELDS = tuple(f.name for f in dataclasses.fields(Command))

# The candidate's percent: a SET_TRAFFIC moves part of the traffic (0 is a rollback, 100 a
# promotion, each with its own registry changes); an APPROVE may approve the last step, 100%.
_PERCENT_RANGE = {CommandKind.SET_TRAFFIC: (1, 99), CommandKind.APPROVE: (1, 100)}


class CommandFileError(InvalidEvent):
    """A command file that cannot be read as a Command; names the file and, when known, the field."""

    def __init__(self, path: Path, reason: str, field: str = "", line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        MleStreamError.__init__(self, f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
        self.path = path
        self.field = field
        self.reason = reason


def manual_traffic(kind: CommandKind, baseline: str, candidate: str, percent: int | None) -> dict[str, int]:
    """The split after the command: rollback 100/0, promote 0/100, set-traffic and approve 100-P/P."""
    if kind is CommandKind.ROLLBACK:
        return {baseline: 100, candidate: 0}
    if kind is CommandKind.PROMOTE:
        return {baseline: 0, candidate: 100}
    if kind not in _PERCENT_RANGE:
        raise InvalidEvent(f"an operator issues {', '.join(k.value for k in OPERATOR_KINDS.values())}, "
                           f"not {kind.value}", "kind")
    low, high = _PERCENT_RANGE[kind]
    if isinstance(percent, bool) or not isinstance(percent, int) or not low <= percent <= high:
        raise InvalidEvent(f"must be a whole number from {low} to {high} for {kind.value} (the candidate's "
                           f"share of traffic; the baseline gets the rest), got {percent!r}", "percent")
    return {baseline: 100 - percent, candidate: percent}


def manual_command(
    kind: CommandKind,
    *,
    model: str,
    baseline: str,
    candidate: str,
    reason: str,
    operator: str,
    signer: Signer,
    percent: int | None = None,
    issued_at: int | None = None,
) -> Command:
    """A command of `kind` issued by `operator` now (or at `issued_at`, epoch ms), signed by
    `signer` (which sets its expiry).

    `percent` is the candidate's share for SET_TRAFFIC (1..99) and APPROVE (1..100) and must be
    None otherwise. InvalidEvent names the argument that is wrong.
    """
    for name, value in (("model", model), ("baseline", baseline), ("candidate", candidate),
                        ("reason", reason), ("operator", operator)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidEvent(f"must be a non-empty string, got {value!r}", name)
    if baseline == candidate:
        raise InvalidEvent(f"baseline and candidate must be two different versions, both are {baseline!r}",
                           "candidate")
    if percent is not None and kind not in _PERCENT_RANGE:
        raise InvalidEvent(f"applies to SET_TRAFFIC and APPROVE only; a {kind.value} sets the traffic itself "
                           f"({manual_traffic(kind, baseline, candidate, None)})", "percent")
    traffic = manual_traffic(kind, baseline, candidate, percent)
    at = time.time_ns() // 1_000_000 if issued_at is None else issued_at
    rule = f"manual:{kind.value.lower()}"
    unsigned = Command(
        command_id=command_id(model, baseline, candidate, kind, rule, at, at),
        kind=kind,
        model=model,
        baseline_version=baseline,
        candidate_version=candidate,
        traffic=traffic,
        reason=reason,
        rule=rule,
        window_start=at,
        window_end=at,
        evidence=json.dumps({"operator": operator, "reason": reason, "source": SOURCE}, sort_keys=True),
        policy_version=POLICY_VERSION,
        issued_at=at,
    )
    return signer.sign(unsigned)


def command_json(command: Command) -> str:
    """The JSON form of `command` (see the module docstring), one field per line."""
    return json.dumps(wire.to_json_dict(command), indent=2, ensure_ascii=False) + "\n"


def write_command_file(command: Command, path: Path) -> None:
    """Write the JSON form of `command` to `path`; MleStreamError when it cannot be written."""
    try:
        Path(path).write_text(command_json(command), encoding="utf-8")
    except OSError as exc:
        raise MleStreamError(f"{path}: cannot write the command: {exc.strerror or exc}") from None


def read_command_file(path: Path) -> Command:
    """The Command in a file written by write_command_file; CommandFileError names file and field.

    Every field is required and no other is allowed, so a typo is reported rather than ignored.
    The signature is not checked here: the actuator checks it, and rejects what does not verify.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CommandFileError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CommandFileError(path, f"not UTF-8 text (byte {exc.start}): a command file is JSON, as "
                                     "`mle-stream command ... --out FILE` writes it") from None
    except json.JSONDecodeError as exc:
        raise CommandFileError(path, f"not JSON: {exc.msg} (column {exc.colno}); a command file is one JSON "
                                     "object", line=exc.lineno) from None
    except RecursionError:
        raise CommandFileError(path, "not JSON that can be read: nested too deeply") from None
    if not isinstance(doc, dict):
        raise CommandFileError(path, f"must hold one JSON object (a command), got a JSON {type(doc).__name__}")
    unknown = sorted(set(doc) - set(COMMAND_FIELDS))
    if unknown:
        raise CommandFileError(path, f"unknown field: a command has exactly the fields {', '.join(COMMAND_FIELDS)}",
                               unknown[0])
    missing = [name for name in COMMAND_FIELDS if name not in doc]
    if missing:
        raise CommandFileError(path, "is missing: a command file has every field of schemas/command.avsc "
                                     "(`mle-stream command ... --out FILE` writes one)", missing[0])
    try:
        return wire.decode_command(json.dumps(doc).encode())
    except InvalidEvent as exc:
        raise CommandFileError(path, exc.reason, exc.field) from None


def publish_command(command: Command, bootstrap: str, topics: Topics, *, timeout_s: float = 15.0,
                    security: KafkaSecurity = PLAINTEXT) -> tuple[int, int]:
    """Produce `command` to the commands topic keyed by its model and wait until the broker confirms it.

    The key matters: the worker reads a model's commands from the partition number its predictions
    use (the client keys those by model too, with the same partitioner). Returns (partition, offset);
    BrokerError when the broker refuses the message or does not confirm it within `timeout_s`.
    """
    from confluent_kafka import KafkaError, KafkaException, Message, Producer

    from mle_stream.kafka import partition_counts, producer_config

    counts = partition_counts(bootstrap, [topics.predictions, topics.commands], timeout_s=timeout_s, security=security)
    if len(set(counts.values())) > 1:
        log.warning("%s has %d partitions and %s %d: the worker may not see this command next to the model's "
                    "predictions (approvals need that; give both topics the same number of partitions)",
                    topics.commands, counts[topics.commands], topics.predictions, counts[topics.predictions])
    outcome: list[tuple[KafkaError | None, Message]] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        outcome.append((error, message))

    where = f"topic {topics.commands} at {bootstrap}"
    producer = Producer(producer_config(bootstrap, security=security, **{"message.timeout.ms": int(timeout_s * 1000)}))
    try:
        producer.produce(topics.commands, key=command.model.encode(), value=wire.encode_command(command),
                         on_delivery=delivered)
    except (KafkaException, BufferError) as exc:
        raise BrokerError(f"cannot send command {command.command_id} to {where}: {exc}") from exc
    producer.flush(timeout_s + 5)
    if not outcome:
        raise BrokerError(f"{where} did not confirm command {command.command_id} within {timeout_s:g} s; it may "
                          f"or may not have been written: look for its id on {topics.commands} before sending a "
                          "new one")
    error, message = outcome[0]
    if error is not None:
        raise BrokerError(f"{where} did not take command {command.command_id}: {error.str()}")
    return message.partition() or 0, message.offset() or 0

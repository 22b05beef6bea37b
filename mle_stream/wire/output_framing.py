"""mle-stream's outputs in Confluent Schema Registry framing, when the user asks for it
(MLE_OUTPUT_FORMAT=confluent; docs/schema-registry.md).

mle-stream writes every output as Avro single-object encoding: `C3 01`, the 8-byte fingerprint,
then the body. The Confluent framing has the same body behind `0x00` and a 4-byte schema id, so
an output is re-framed by swapping the header. Each schema is registered once, when the component
starts, under the TopicNameStrategy subject `<topic>-value`: re-framing then needs no I/O, and a
registry that refuses the schema stops the start with the reason instead of costing outputs later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mle_stream.retry import Backoff, RetriesExhausted, retrying
from mle_stream.wire import confluent
from mle_stream.wire.avro_schemas import schemas as known_schemas
from mle_stream.wire.framing import AVRO_MARKER, SINGLE_OBJECT_HEADER_LEN
from mle_stream.wire.schema_registry import RegistryUnavailable, SchemaRegistryClient, SchemaRegistryError

log = logging.getLogger(__name__)

CONFLUENT = "confluent"  # Settings.output_format (MLE_OUTPUT_FORMAT) that asks for it; "avro" is the default


class ConfluentOutputs:
    """Re-frames single-object outputs of the topics it was started for; see the module docstring."""

    def __init__(self, registry: SchemaRegistryClient, schemas: Mapping[str, str],
                 backoff: Backoff = Backoff(attempts=5, base_delay_s=1.0, max_delay_s=8.0)) -> None:
        """Register each `topic -> schema name` (Command, MetricSnapshot, ...) under `<topic>-value`;
        a registry that does not answer is asked again with `backoff`. Raises SchemaRegistryError."""
        known = known_schemas()
        self._headers: dict[tuple[str, bytes], bytes] = {}
        for topic, name in schemas.items():
            schema = known[name]
            subject = f"{topic}-value"

            def register(subject: str = subject, text: str = schema.canonical_form) -> int:
                return registry.register(subject, text)

            def transient(exc: Exception) -> str | None:
                return str(exc) if isinstance(exc, RegistryUnavailable) else None

            try:
                # the lambda runs within this iteration (retrying is synchronous): `subject` is this one's
                schema_id = retrying(register, backoff, transient, on_retry=lambda n, why, delay: log.warning(
                    "registering %s: %s; again in %.1f s", subject, why, delay))  # noqa: B023
            except RetriesExhausted as exc:
                raise RegistryUnavailable(f"cannot register the {name} schema as {subject} at {registry.url}: "
                                          f"{exc}") from None
            except SchemaRegistryError as exc:
                raise SchemaRegistryError(f"the registry at {registry.url} refuses the {name} schema as {subject}: "
                                          f"{exc}; MLE_OUTPUT_FORMAT=confluent needs a subject that accepts it "
                                          "(compatibility NONE, or a new subject)") from None
            self._headers[(topic, schema.fingerprint)] = confluent.MAGIC + schema_id.to_bytes(4, "big")
            log.info("%s: %s schema registered as %s, id %d", topic, name, subject, schema_id)

    def frame(self, topic: str, value: bytes) -> bytes:
        """`value` (a single-object message of `topic`) in Confluent framing; anything else (a
        topic or schema this was not started for, a dead letter's JSON) unchanged."""
        marker, end = AVRO_MARKER, SINGLE_OBJECT_HEADER_LEN
        header = self._headers.get((topic, value[len(marker):end]))
        return value if header is None or not value.startswith(marker) else header + value[end:]

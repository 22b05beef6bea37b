"""The wire format of every mle-stream topic: the one package that turns events into bytes and back.

Producers may write either of two encodings; consumers accept both, told apart by the first bytes:

- **Avro single-object encoding** (the Avro spec's registry-free framing, framing.py): the marker
  bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
  Canonical Form, then the Avro binary body. Any Avro implementation (Java's
  ``BinaryMessageDecoder``, ``avro`` for Python, fastavro) reads it with the ``schemas/*.avsc``
  files. This is what mle-stream itself writes. Readers also accept the fingerprints that
  fastavro and goavro compute where they depart from the spec (avro_schemas.py); docs/producing.md
  is the producers' side of this contract.
- **JSON** (UTF-8, json_records.py), for producers that do not want an Avro dependency: one object
  per message, an array of objects, or ``{"records": [...]}``. Field names are the Avro field names.
  Unknown fields are ignored so that an older consumer keeps reading what a newer producer writes.

- **Confluent Schema Registry framing** (confluent.py): the byte 0x00, the 4-byte schema id, then
  the Avro binary body, read with the writer schema the registry has under that id (a
  `WriterSchemas` lookup the caller passes in, schema_registry.py) resolved against ours.
  mle-stream writes it only when asked to (output_framing.py). See docs/schema-registry.md.

Where each part lives:

    avro_schemas.py    the schemas, their canonical forms and fingerprints
    framing.py         the single-object header
    results.py         what a decoder of predictions or labels returns (DecodeResult, ColumnsResult)
    json_records.py    predictions and labels from JSON objects and mappings; events to JSON dicts
    avro_records.py    predictions and labels to and from Avro datums
    records.py         the prediction and label topics' decoders, as records or columns
    _batch_reader.py   a PredictionBatch / LabelBatch body straight into columns (the hot path)
    single_events.py   commands, rollout events, metric snapshots and drift tables
    confluent.py       Confluent framing and schema resolution; schema_registry.py its REST client
    output_framing.py  outputs re-framed for a Schema Registry (MLE_OUTPUT_FORMAT=confluent)
    dead_letter.py     the dead-letter topic's entries

Prediction and label topics carry either one record or a batch (PredictionBatch / LabelBatch) per
message; their decoders return every valid record and one `RecordError` per invalid one. Commands,
rollout events, metric snapshots and drift tables travel one per message and their decoders raise
`InvalidEvent`. This package imports no stream runtime, Kubernetes or MLflow: serving pods use it
through mle_stream.client.
"""

from mle_stream.wire.avro_records import encode_label, encode_labels, encode_prediction, encode_predictions
from mle_stream.wire.avro_schemas import WireSchema, schema_dir, schemas
from mle_stream.wire.dead_letter import bounded_text, dead_letter_entry
from mle_stream.wire.framing import AVRO_MARKER, SINGLE_OBJECT_HEADER_LEN
from mle_stream.wire.json_records import (
    check_encodable,
    check_record,
    label_from_dict,
    prediction_from_dict,
    to_json_dict,
)
from mle_stream.wire.output_framing import CONFLUENT, ConfluentOutputs
from mle_stream.wire.records import (
    decode_label_columns,
    decode_labels,
    decode_prediction_columns,
    decode_predictions,
)
from mle_stream.wire.results import ColumnsResult, DecodeResult, RecordError
from mle_stream.wire.schema_registry import (
    RegistryUnavailable,
    SchemaRegistryClient,
    SchemaRegistryError,
    SchemaRegistrySettings,
    WriterSchemas,
    client_for,
)
from mle_stream.wire.single_events import (
    decode_command,
    decode_drift_table,
    decode_metric_snapshot,
    decode_rollout_event,
    encode_command,
    encode_drift_table,
    encode_metric_snapshot,
    encode_rollout_event,
)

__all__ = [
    "AVRO_MARKER",
    "CONFLUENT",
    "ColumnsResult",
    "ConfluentOutputs",
    "DecodeResult",
    "RecordError",
    "RegistryUnavailable",
    "SINGLE_OBJECT_HEADER_LEN",
    "SchemaRegistryClient",
    "SchemaRegistryError",
    "SchemaRegistrySettings",
    "WireSchema",
    "WriterSchemas",
    "bounded_text",
    "check_encodable",
    "check_record",
    "client_for",
    "dead_letter_entry",
    "decode_command",
    "decode_drift_table",
    "decode_label_columns",
    "decode_labels",
    "decode_metric_snapshot",
    "decode_prediction_columns",
    "decode_predictions",
    "decode_rollout_event",
    "encode_command",
    "encode_drift_table",
    "encode_label",
    "encode_labels",
    "encode_metric_snapshot",
    "encode_prediction",
    "encode_predictions",
    "encode_rollout_event",
    "label_from_dict",
    "prediction_from_dict",
    "schema_dir",
    "schemas",
    "to_json_dict",
]

"""What other Avro implementations write is what the worker reads: fastavro, both ways it fingerprints
a schema, goavro, Java's Avro (BinaryMessageEncoder, from docs/producing.md), and the Python producer
of docs/producing.md over a real broker."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, load_schema_ordered, to_parsing_canonical_form

from conftest import read_until
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.wire import records as record_path
from mle_stream.wire.avro_schemas import history

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
DOC = ROOT / "docs" / "producing.md"
T0 = 1_700_000_000_000

# Debian's libavro-java (scripts/test installs it when run as root).
JAVA_CLASSPATH = [Path("/usr/share/java") / jar for jar in
                  ("avro.jar", "jackson-core-asl.jar", "jackson-mapper-asl.jar", "slf4j-api.jar", "slf4j-nop.jar")]


def doc_example(name: str) -> str:
    """The fenced code block after `<!-- example: name -->` in docs/producing.md."""
    match = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/producing.md has no example marked '{name}'"
    return match.group(1)


def fastavro_message(schema: Any, datum: dict[str, Any]) -> bytes:
    """Single-object encoding, fingerprinted by fastavro itself."""
    out = io.BytesIO()
    out.write(b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")))
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


PREDICTIONS = [
    Prediction("p0", "fraud", "2", T0, score=0.25, latency_ms=3.5, features={"amount": 12.5, "country": "DE"},
               segment={"country": "DE"}),
    Prediction("p1", "fraud", "2", T0 + 1, scores={"a": 0.4, "b": 0.6}, predicted_label="b"),
    Prediction("p2", "fraud", "2", T0 + 2, value=-3.25, predicted_label=7),
    Prediction("p3", "fraud", "2", T0 + 3, error="timeout"),
]
LABELS = [Label("p0", "fraud", T0 + 10, True), Label("p1", "fraud", T0 + 11, "b"), Label("p2", "fraud", T0 + 12, -3.0)]


@pytest.mark.parametrize("how", ["parse_schema with named_schemas", "load_schema_ordered"])
def test_what_fastavro_writes_and_fingerprints_is_read(how: str) -> None:
    def batch_schema(record: str, batch: str) -> Any:
        if how == "load_schema_ordered":
            return load_schema_ordered([str(SCHEMAS / record), str(SCHEMAS / batch)])
        named: dict[str, Any] = {}
        fastavro.parse_schema(json.loads((SCHEMAS / record).read_text()), named_schemas=named)
        return fastavro.parse_schema(json.loads((SCHEMAS / batch).read_text()), named_schemas=named)

    predictions = fastavro_message(batch_schema("prediction.avsc", "prediction_batch.avsc"),
                                   {"records": [dataclasses.asdict(p) for p in PREDICTIONS]})
    labels = fastavro_message(batch_schema("label.avsc", "label_batch.avsc"),
                              {"records": [dataclasses.asdict(x) for x in LABELS]})
    # Java's fingerprints (tests/test_codec.py) for load_schema_ordered, which inlines the record
    # type as the spec says; parse_schema keeps its bare name, and fastavro fingerprints that.
    expected = {"load_schema_ordered": (0x0509BF3536581FA4, 0x0A0FF309D5BD58D5),
                "parse_schema with named_schemas": (0x2097B0DBFBF1FA1F, 0xB249299E5E949463)}[how]
    assert (int.from_bytes(predictions[2:10], "little"), int.from_bytes(labels[2:10], "little")) == expected

    read = wire.decode_prediction_columns(predictions)
    assert read.ok and read.columns.records() == PREDICTIONS
    assert record_path._prediction_columns(predictions) is not None  # the fast batch reader took it
    assert wire.decode_predictions(predictions).records == PREDICTIONS
    read_labels = wire.decode_label_columns(labels)
    assert read_labels.ok and read_labels.columns.records() == LABELS
    assert wire.decode_labels(labels).records == LABELS


def test_a_single_record_fastavro_writes_is_read() -> None:
    prediction = fastavro.parse_schema(json.loads((SCHEMAS / "prediction.avsc").read_text()))
    label = fastavro.parse_schema(json.loads((SCHEMAS / "label.avsc").read_text()))
    assert wire.decode_prediction_columns(fastavro_message(prediction, dataclasses.asdict(PREDICTIONS[1]))
                                           ).columns.records() == [PREDICTIONS[1]]
    assert wire.decode_labels(fastavro_message(label, dataclasses.asdict(LABELS[2]))).records == [LABELS[2]]


# What goavro wrote (tests/goavro/main.go): a Prediction and a PredictionBatch of two. goavro and the
# avro package for Python (1.11.1: CRC-64-AVRO of Schema.canonical_form) keep a timestamp as
# {"type":"long"} in the canonical form, the spec says "long": fingerprints 0x6a1c1c522fa228ba and
# 0x8338350ee7243371, which both compute.
GOAVRO_MESSAGES = [
    "c301ba28a22f521c1c6a0467310a6672617564023280a0abfef96202000000000000e03f000000000002020e636f756e7472790444450000",
    "c301713324e70e353883040467320a6672617564023282a0abfef96202000000000000d03f000000000002020e636f756e7472790444"
    "4500000467330a6672617564023284a0abfef96202000000000000e83f000000000002020e636f756e747279044445000000",
]


def test_what_goavro_writes_is_read() -> None:
    records = [wire.decode_prediction_columns(bytes.fromhex(message)).columns.records()
               for message in GOAVRO_MESSAGES]
    assert records == [
        [Prediction("g1", "fraud", "2", T0, score=0.5, segment={"country": "DE"})],
        [Prediction("g2", "fraud", "2", T0 + 1, score=0.25, segment={"country": "DE"}),
         Prediction("g3", "fraud", "2", T0 + 2, score=0.75, segment={"country": "DE"})],
    ]


JAVA_DRIVER = """
import java.io.File;
import java.io.FileOutputStream;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public final class WriteFromDoc {
  public static void main(String[] args) throws Exception {
    File schemas = new File(args[0]);
    Schema.Parser parser = new Schema.Parser();
    for (String file : new String[] {"prediction.avsc", "label.avsc", "prediction_batch.avsc", "label_batch.avsc",
                                     "command.avsc", "rollout_event.avsc", "metric_snapshot.avsc",
                                     "drift_table.avsc"}) {
      print(file, parser.parse(new File(schemas, file)));
    }
    print("history/command-1.avsc", new Schema.Parser().parse(new File(schemas, "history/command-1.avsc")));
    MlePredictions encoder = new MlePredictions(schemas);
    Map<String, Object> features = new LinkedHashMap<>();
    features.put("amount", 120.0);
    features.put("country", "DE");
    byte[] message = encoder.encode(Arrays.asList(
        encoder.prediction("req-1", "fraud-detector", "2", 1700000000000L, 0.91, features),
        encoder.prediction("req-2", "fraud-detector", "2", 1700000000001L, 0.07, null)));
    try (FileOutputStream out = new FileOutputStream(args[1])) {
      out.write(message);
    }
  }

  private static void print(String file, Schema schema) {
    System.out.println(file + " " + Long.toUnsignedString(SchemaNormalization.parsingFingerprint64(schema)));
  }
}
"""


def test_java_fingerprints_and_the_java_encoder_of_the_docs_are_read(tmp_path: Path) -> None:
    """Java's Avro, for real: the encoder class of docs/producing.md compiled and run (its Kafka
    part needs kafka-clients, which is not here), and Java's fingerprint of every schema."""
    missing = [str(jar) for jar in JAVA_CLASSPATH if not jar.is_file()]
    assert not missing, f"missing {missing}: install Debian's libavro-java (apt-get install libavro-java)"
    (tmp_path / "MlePredictions.java").write_text(doc_example("java encoder"))
    (tmp_path / "WriteFromDoc.java").write_text(JAVA_DRIVER)
    classpath = os.pathsep.join([*map(str, JAVA_CLASSPATH), str(tmp_path)])
    subprocess.run(["javac", "-nowarn", "-cp", classpath, "-d", str(tmp_path),
                    str(tmp_path / "MlePredictions.java"), str(tmp_path / "WriteFromDoc.java")],
                   check=True, capture_output=True, timeout=60)
    run = subprocess.run(["java", "-cp", classpath, "WriteFromDoc", str(SCHEMAS), str(tmp_path / "message")],
                         check=True, capture_output=True, text=True, timeout=60)

    java = {file: int(fp).to_bytes(8, "little") for file, fp in (line.split() for line in run.stdout.splitlines())}
    ours = {s.file: s.fingerprint for s in [*wire.schemas().values(), *history("Command")]}
    assert java == ours
    message = (tmp_path / "message").read_bytes()
    assert message[:10] == wire.AVRO_MARKER + wire.schemas()["PredictionBatch"].fingerprint
    read = wire.decode_prediction_columns(message)
    assert read.ok and read.columns.records() == [
        Prediction("req-1", "fraud-detector", "2", T0, score=0.91, features={"amount": 120.0, "country": "DE"}),
        Prediction("req-2", "fraud-detector", "2", T0 + 1, score=0.07),
    ]


def test_the_python_producer_of_the_docs_is_read_by_the_worker(kafka_bootstrap: str, topics: Topics) -> None:
    env = {**os.environ, "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SCHEMAS": str(SCHEMAS),
           "MLE_TOPIC_PREDICTIONS": topics.predictions, "MLE_TOPIC_LABELS": topics.labels}
    before = int(time.time() * 1000)
    subprocess.run([sys.executable, "-c", doc_example("python producer")], env=env, cwd=ROOT, check=True, timeout=60)
    after = int(time.time() * 1000)

    messages = read_until(kafka_bootstrap, [topics.predictions, topics.labels], lambda seen: len(seen) >= 2)
    by_topic = {m.topic(): m for m in messages}
    assert len(messages) == 2 and set(by_topic) == {topics.predictions, topics.labels}
    assert {m.key() for m in messages} == {b"fraud-detector"}
    predictions = wire.decode_prediction_columns(by_topic[topics.predictions].value())
    labels = wire.decode_label_columns(by_topic[topics.labels].value())
    assert predictions.ok and labels.ok
    now = int(predictions.columns.timestamp[0])
    assert before <= now <= after
    assert predictions.columns.records() == [
        Prediction("req-1", "fraud-detector", "2", now, score=0.91, latency_ms=12.5,
                   features={"amount": 120.0, "country": "DE"}, segment={"country": "DE"}),
        Prediction("req-2", "fraud-detector", "2", now, score=0.07, latency_ms=9.0,
                   features={"amount": 3.5, "country": "FR"}, segment={"country": "FR"}),
    ]
    assert labels.columns.records() == [Label("req-1", "fraud-detector", now, True),
                                        Label("req-2", "fraud-detector", now, False)]

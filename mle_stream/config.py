"""Settings from the environment: broker, topic names, command keys, MLflow.

Every variable is optional, except that components that sign or verify commands need keys
(mle_stream/keys.py turns the key settings into a Signer and a Verifier).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mle_stream.core.commands import DEFAULT_TTL_MS
from mle_stream.core.durations import parse_duration_ms
from mle_stream.errors import ConfigError
from mle_stream.kafka_security import KafkaSecurity
from mle_stream.redact import redact_uri
from mle_stream.wire import SchemaRegistrySettings

# Where the worker and the actuator serve their Prometheus metrics unless told otherwise (MLE_METRICS_PORT,
# --metrics-port): next to the OpenTelemetry exporter's 9464, one port per component on a shared host.
WORKER_METRICS_PORT = 9464
ACTUATOR_METRICS_PORT = 9465

# Event-time alignment of the worker's two inputs (docs/catch-up.md). Labels count as idle after this
# much silence once caught up: two of the consumer's 1.5-s fetch waits, so one empty fetch is not enough.
INPUT_IDLE_MS = 3_000
# A labels partition that is behind yet delivers nothing this long counts as idle all the same
# ("enforced"): a stuck broker or partition must not hold every window of its models forever.
INPUT_WAIT_MAX_MS = 600_000
# How far (event time) a model's predictions may run ahead of its closing clock before the worker
# pauses their partition: ~87 MB of pending predictions at 1,000 predictions/s. Its labels ahead of its
# predictions by as much pause the labels partition the same way.
ALIGN_MAX_SKEW_MS = 600_000


@dataclass(frozen=True)
class Topics:
    """The topic names, each overridable by MLE_TOPIC_<NAME> (e.g. MLE_TOPIC_PREDICTIONS)."""

    predictions: str = "mle.predictions"
    labels: str = "mle.labels"
    commands: str = "mle.commands"
    rollout_events: str = "mle.rollout-events"
    metrics: str = "mle.metrics"
    drift: str = "mle.drift"
    dead_letter: str = "mle.dead-letter"
    # The worker's checkpoints: compacted, created by the worker itself (mle_stream.kafka.ensure_state_topic).
    state: str = "mle.state"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Topics:
        defaults = cls()
        return cls(**{
            name: env.get(f"MLE_TOPIC_{name.upper()}", getattr(defaults, name))
            for name in defaults.__dataclass_fields__
        })

    def all(self) -> list[str]:
        """The event topics, created alike (delete policy, MLE_TOPIC_PARTITIONS partitions). The state
        topic is not among them: it needs log compaction, and the worker creates it so on start."""
        return [getattr(self, name) for name in self.__dataclass_fields__ if name != "state"]


def duration_ms(raw: str, name: str, examples: str) -> int:
    """A duration setting in milliseconds: the topologies' durations ('30s', '5m', '500ms'), or a
    bare number of seconds. ConfigError naming the setting `name` unless it is > 0."""
    try:
        ms = parse_duration_ms(raw + "s" if raw[-1:].isdigit() else raw)
    except ValueError:
        ms = 0
    if ms <= 0:
        raise ConfigError(f"{name} must be a duration > 0 such as {examples}, got {raw!r}")
    return ms


def missing_sqlite_store(tracking_uri: str) -> str | None:
    """The file of a `sqlite:///` MLflow store that does not exist (None otherwise): a reader
    must not open it, since MLflow would create an empty store wherever the process runs."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///")
    return None if os.path.exists(path) else path


@dataclass(frozen=True)
class Settings:
    """What every component needs to know about its surroundings.

    bootstrap_servers: MLE_BOOTSTRAP_SERVERS; empty means "start the embedded broker".
    mlflow_tracking_uri: MLFLOW_TRACKING_URI (MLflow's own variable).
    partitions: MLE_TOPIC_PARTITIONS, used when mle-stream creates its topics.
    worker_group / actuator_group: MLE_WORKER_GROUP / MLE_ACTUATOR_GROUP, the consumer groups (and
    the Faust app id); give each deployment on a shared cluster its own.
    checkpoint_interval_s: MLE_CHECKPOINT_INTERVAL ('30s', '5m', '500ms' or seconds), how often the
    worker checkpoints its state (see docs/operations.md, State and restarts).
    notify_webhook: MLE_NOTIFY_WEBHOOK, a Slack-compatible incoming webhook the actuator reports
    rollbacks and failed or rejected commands to (empty: none).
    metrics_port: MLE_METRICS_PORT, the port of the Prometheus metrics (0: not served); None (unset)
    means each component's default (WORKER_METRICS_PORT, ACTUATOR_METRICS_PORT).
    kafka_security: TLS and SASL of every Kafka connection, from MLE_KAFKA_PROPERTIES_FILE and the
    MLE_KAFKA_<PROPERTY> variables (mle_stream.kafka_security; docs/kafka-security.md).
    schema_registry: the Confluent Schema Registry whose framed messages the worker reads
    (docs/schema-registry.md): MLE_SCHEMA_REGISTRY_URL, MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO
    (`user:password`), MLE_SCHEMA_REGISTRY_SSL_CA_LOCATION, MLE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION,
    MLE_SCHEMA_REGISTRY_SSL_KEY_LOCATION and MLE_SCHEMA_REGISTRY_SSL_KEY_PASSWORD. No URL: no registry.
    output_format: MLE_OUTPUT_FORMAT, `avro` (default: Avro single-object encoding) or `confluent`
    (Confluent framing, each output schema registered as `<topic>-value`; needs the registry).

    Command keys (mle_stream/keys.py, docs/command-signing.md):
    signing_key_file: MLE_SIGNING_KEY_FILE, the Ed25519 private key (PEM) this component signs with.
    signing_key: MLE_SIGNING_KEY, a shared HMAC secret (at least 32 bytes) that signs and verifies.
    signing_key_id: MLE_SIGNING_KEY_ID, the key id of either (default: the key file's name without
    its extension; "hmac" for MLE_SIGNING_KEY).
    verify_keys_dir: MLE_VERIFY_KEYS_DIR, a directory of `<key_id>.pub` Ed25519 public keys (PEM).
    verify_keys: MLE_VERIFY_KEYS, more public keys inline: `key_id:base64url` entries separated by
    commas or whitespace.
    command_ttl_ms: MLE_COMMAND_TTL ('1h', '30m', or seconds), how long a signed command stays valid.

    Alignment of predictions and labels in event time (docs/catch-up.md):
    input_idle_ms: MLE_INPUT_IDLE, how long a caught-up labels input must be silent for a model
    before its windows close by the predictions alone.
    input_wait_max_ms: MLE_INPUT_WAIT_MAX, how long a labels partition that is behind may deliver
    nothing before it counts as idle anyway (enforced).
    align_max_skew_ms: MLE_ALIGN_MAX_SKEW, how far (event time) predictions may run ahead of what
    can be closed before their partition is paused until the labels catch up, and labels ahead of
    the predictions before theirs is paused until the predictions catch up.
    """

    bootstrap_servers: str = ""
    topics: Topics = field(default_factory=Topics)
    mlflow_tracking_uri: str = field(default="sqlite:///mlflow.db", repr=False)  # may carry credentials
    partitions: int = 4
    worker_group: str = "mle-stream-worker"
    actuator_group: str = "mle-stream-actuator"
    checkpoint_interval_s: float = 30.0
    notify_webhook: str = field(default="", repr=False)  # a secret: the token is in its path
    metrics_port: int | None = None
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    schema_registry: SchemaRegistrySettings = field(default_factory=SchemaRegistrySettings)
    output_format: str = "avro"
    # Command keys: see the docstring.
    signing_key_file: str = ""
    signing_key: bytes = field(default=b"", repr=False)
    signing_key_id: str = ""
    verify_keys_dir: str = ""
    verify_keys: str = ""
    command_ttl_ms: int = DEFAULT_TTL_MS
    # Alignment: see the docstring.
    input_idle_ms: int = INPUT_IDLE_MS
    input_wait_max_ms: int = INPUT_WAIT_MAX_MS
    align_max_skew_ms: int = ALIGN_MAX_SKEW_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        raw_partitions = env.get("MLE_TOPIC_PARTITIONS", "4")
        try:
            partitions = int(raw_partitions)
        except ValueError:
            raise ConfigError(f"MLE_TOPIC_PARTITIONS must be a whole number, got {raw_partitions!r}") from None
        raw_interval = env.get("MLE_CHECKPOINT_INTERVAL", "").strip() or f"{cls.checkpoint_interval_s}s"
        interval_s = duration_ms(raw_interval, "MLE_CHECKPOINT_INTERVAL", "30s, 5m or 500ms") / 1000
        raw_port = env.get("MLE_METRICS_PORT", "").strip()
        metrics_port = None
        if raw_port:
            metrics_port = int(raw_port) if raw_port.isdigit() else -1
            if not 0 <= metrics_port <= 65535:
                raise ConfigError(f"MLE_METRICS_PORT must be a port number 0-65535 (0: no metrics), got {raw_port!r}")
        return cls(
            bootstrap_servers=env.get("MLE_BOOTSTRAP_SERVERS", ""),
            topics=Topics.from_env(env),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", cls.mlflow_tracking_uri),
            partitions=partitions,
            worker_group=env.get("MLE_WORKER_GROUP", cls.worker_group),
            actuator_group=env.get("MLE_ACTUATOR_GROUP", cls.actuator_group),
            checkpoint_interval_s=interval_s,
            notify_webhook=env.get("MLE_NOTIFY_WEBHOOK", "").strip(),
            metrics_port=metrics_port,
            kafka_security=KafkaSecurity.from_env(env),
            schema_registry=_schema_registry_settings(env),
            output_format=_output_format(env),
            **_key_settings(env),
            **_alignment_settings(env),
        )


def _alignment_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The alignment fields of Settings (durations such as 3s, 10m; a bare number is seconds)."""

    def read(name: str, default_ms: int, examples: str) -> int:
        raw = env.get(name, "").strip()
        return duration_ms(raw, name, examples) if raw else default_ms

    idle = read("MLE_INPUT_IDLE", INPUT_IDLE_MS, "3s or 500ms")
    wait_max = read("MLE_INPUT_WAIT_MAX", INPUT_WAIT_MAX_MS, "10m or 600 (seconds)")
    if wait_max < idle:
        raise ConfigError(f"MLE_INPUT_WAIT_MAX ({wait_max} ms) must not be below MLE_INPUT_IDLE ({idle} ms): it "
                          f"bounds how long a labels input that is behind may hold windows, idling bounds one that "
                          f"is caught up")
    skew = read("MLE_ALIGN_MAX_SKEW", ALIGN_MAX_SKEW_MS, "10m or 1h")
    return {"input_idle_ms": idle, "input_wait_max_ms": wait_max, "align_max_skew_ms": skew}


def _output_format(env: Mapping[str, str]) -> str:
    raw = env.get("MLE_OUTPUT_FORMAT", "").strip().lower() or "avro"
    if raw not in ("avro", "confluent"):
        raise ConfigError(f"MLE_OUTPUT_FORMAT must be avro (Avro single-object encoding, the default) or confluent "
                          f"(Confluent Schema Registry framing), got {raw!r}")
    if raw == "confluent" and not env.get("MLE_SCHEMA_REGISTRY_URL", "").strip():
        raise ConfigError("MLE_OUTPUT_FORMAT=confluent registers the output schemas in a Schema Registry: set "
                          "MLE_SCHEMA_REGISTRY_URL too")
    return raw


def _schema_registry_settings(env: Mapping[str, str]) -> SchemaRegistrySettings:
    def get(suffix: str) -> str:
        return env.get(f"MLE_SCHEMA_REGISTRY_{suffix}", "").strip()

    url, user_info = get("URL"), get("BASIC_AUTH_USER_INFO")
    if url and not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"MLE_SCHEMA_REGISTRY_URL must be an http:// or https:// URL such as "
                          f"http://schema-registry:8081, got {redact_uri(url)!r}")
    if user_info and ":" not in user_info:
        raise ConfigError("MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be user:password (as Confluent's "
                          "basic.auth.user.info); it has no ':'")
    files = {name: get(name) for name in ("SSL_CA_LOCATION", "SSL_CERTIFICATE_LOCATION", "SSL_KEY_LOCATION")}
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"MLE_SCHEMA_REGISTRY_{name}: no such file {path!r}")
    if files["SSL_KEY_LOCATION"] and not files["SSL_CERTIFICATE_LOCATION"]:
        raise ConfigError("MLE_SCHEMA_REGISTRY_SSL_KEY_LOCATION is set without "
                          "MLE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION, the client certificate it belongs to")
    return SchemaRegistrySettings(url, user_info, files["SSL_CA_LOCATION"], files["SSL_CERTIFICATE_LOCATION"],
                                  files["SSL_KEY_LOCATION"], env.get("MLE_SCHEMA_REGISTRY_SSL_KEY_PASSWORD", ""))


def _key_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The command-key fields of Settings; read here, turned into keys by mle_stream/keys.py."""
    raw_ttl = env.get("MLE_COMMAND_TTL", "").strip()
    ttl_ms = duration_ms(raw_ttl, "MLE_COMMAND_TTL", "1h, 30m or 900 (seconds)") if raw_ttl else DEFAULT_TTL_MS
    return {
        "signing_key_file": env.get("MLE_SIGNING_KEY_FILE", "").strip(),
        "signing_key": env.get("MLE_SIGNING_KEY", "").encode(),
        "signing_key_id": env.get("MLE_SIGNING_KEY_ID", "").strip(),
        "verify_keys_dir": env.get("MLE_VERIFY_KEYS_DIR", "").strip(),
        "verify_keys": env.get("MLE_VERIFY_KEYS", "").strip(),
        "command_ttl_ms": ttl_ms,
    }

"""Settings from the environment: broker, topic names, command keys, MLflow.

Every variable is optional, except that components that sign or verify commands need keys
(mle_stream/keys.py turns the key settings into a Signer and a Verifier).

ENVIRONMENT declares every variable mle-stream reads, once: its name, default and help. `read` is
the only function that reads one, and refuses an undeclared name; `environment_help` prints the
declarations as the `environment:` section of every command's --help.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mle_stream.core.commands import DEFAULT_TTL_MS
from mle_stream.core.durations import parse_duration_ms
from mle_stream.errors import ConfigError
from mle_stream.kafka_security import PROPERTIES, KafkaSecurity, env_variable
from mle_stream.redact import redact_uri
from mle_stream.wire import SchemaRegistrySettings

# The worker's live status page (mle_stream/status/server.py) unless told otherwise (MLE_STATUS_PORT,
# --status-port).
STATUS_PORT = 8077

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
# pauses their partition: it bounds the pending predictions held while the labels catch up
# (docs/catch-up.md gives the memory at a rate). Its labels ahead of its predictions by as much
# pause the labels partition the same way.
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
            name: read(f"MLE_TOPIC_{name.upper()}", env, getattr(defaults, name))
            for name in defaults.__dataclass_fields__
        })

    def all(self) -> list[str]:
        """The event topics, created alike (delete policy, MLE_TOPIC_PARTITIONS partitions). The state
        topic is not among them: it needs log compaction, and the worker creates it so on start."""
        return [getattr(self, name) for name in self.__dataclass_fields__ if name != "state"]


def kafka_security_from_env(env: Mapping[str, str] = os.environ) -> KafkaSecurity:
    """The TLS and SASL settings alone (MLE_KAFKA_*): what the client needs of the environment besides
    the topic names, without the rest of Settings, so that a serving pod is not refused for a setting
    of the worker."""
    return KafkaSecurity.from_env(env)


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
        raw_partitions = read("MLE_TOPIC_PARTITIONS", env, str(cls.partitions))
        try:
            partitions = int(raw_partitions)
        except ValueError:
            raise ConfigError(f"MLE_TOPIC_PARTITIONS must be a whole number, got {raw_partitions!r}") from None
        raw_interval = read("MLE_CHECKPOINT_INTERVAL", env).strip() or f"{cls.checkpoint_interval_s}s"
        interval_s = duration_ms(raw_interval, "MLE_CHECKPOINT_INTERVAL", "30s, 5m or 500ms") / 1000
        raw_port = read("MLE_METRICS_PORT", env).strip()
        metrics_port = None
        if raw_port:
            metrics_port = int(raw_port) if raw_port.isdigit() else -1
            if not 0 <= metrics_port <= 65535:
                raise ConfigError(f"MLE_METRICS_PORT must be a port number 0-65535 (0: no metrics), got {raw_port!r}")
        return cls(
            bootstrap_servers=read("MLE_BOOTSTRAP_SERVERS", env),
            topics=Topics.from_env(env),
            mlflow_tracking_uri=read("MLFLOW_TRACKING_URI", env, cls.mlflow_tracking_uri),
            partitions=partitions,
            worker_group=read("MLE_WORKER_GROUP", env, cls.worker_group),
            actuator_group=read("MLE_ACTUATOR_GROUP", env, cls.actuator_group),
            checkpoint_interval_s=interval_s,
            notify_webhook=read("MLE_NOTIFY_WEBHOOK", env).strip(),
            metrics_port=metrics_port,
            kafka_security=KafkaSecurity.from_env(env),
            schema_registry=_schema_registry_settings(env),
            output_format=_output_format(env),
            **_key_settings(env),
            **_alignment_settings(env),
        )


def _alignment_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The alignment fields of Settings (durations such as 3s, 10m; a bare number is seconds)."""

    def duration(name: str, default_ms: int, examples: str) -> int:
        raw = read(name, env).strip()
        return duration_ms(raw, name, examples) if raw else default_ms

    idle = duration("MLE_INPUT_IDLE", INPUT_IDLE_MS, "3s or 500ms")
    wait_max = duration("MLE_INPUT_WAIT_MAX", INPUT_WAIT_MAX_MS, "10m or 600 (seconds)")
    if wait_max < idle:
        raise ConfigError(f"MLE_INPUT_WAIT_MAX ({wait_max} ms) must not be below MLE_INPUT_IDLE ({idle} ms): it "
                          f"bounds how long a labels input that is behind may hold windows, idling bounds one that "
                          f"is caught up")
    skew = duration("MLE_ALIGN_MAX_SKEW", ALIGN_MAX_SKEW_MS, "10m or 1h")
    return {"input_idle_ms": idle, "input_wait_max_ms": wait_max, "align_max_skew_ms": skew}


def _output_format(env: Mapping[str, str]) -> str:
    raw = read("MLE_OUTPUT_FORMAT", env).strip().lower() or "avro"
    if raw not in ("avro", "confluent"):
        raise ConfigError(f"MLE_OUTPUT_FORMAT must be avro (Avro single-object encoding, the default) or confluent "
                          f"(Confluent Schema Registry framing), got {raw!r}")
    if raw == "confluent" and not read("MLE_SCHEMA_REGISTRY_URL", env).strip():
        raise ConfigError("MLE_OUTPUT_FORMAT=confluent registers the output schemas in a Schema Registry: set "
                          "MLE_SCHEMA_REGISTRY_URL too")
    return raw


def _schema_registry_settings(env: Mapping[str, str]) -> SchemaRegistrySettings:
    def get(suffix: str) -> str:
        return read(f"MLE_SCHEMA_REGISTRY_{suffix}", env).strip()

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
                                  files["SSL_KEY_LOCATION"], read("MLE_SCHEMA_REGISTRY_SSL_KEY_PASSWORD", env))


def _key_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The command-key fields of Settings; read here, turned into keys by mle_stream/keys.py."""
    raw_ttl = read("MLE_COMMAND_TTL", env).strip()
    ttl_ms = duration_ms(raw_ttl, "MLE_COMMAND_TTL", "1h, 30m or 900 (seconds)") if raw_ttl else DEFAULT_TTL_MS
    return {
        "signing_key_file": read("MLE_SIGNING_KEY_FILE", env).strip(),
        "signing_key": read("MLE_SIGNING_KEY", env).encode(),
        "signing_key_id": read("MLE_SIGNING_KEY_ID", env).strip(),
        "verify_keys_dir": read("MLE_VERIFY_KEYS_DIR", env).strip(),
        "verify_keys": read("MLE_VERIFY_KEYS", env).strip(),
        "command_ttl_ms": ttl_ms,
    }


@dataclass(frozen=True)
class Variable:
    """An environment variable mle-stream reads.

    name: the variable, or a family such as MLE_TOPIC_<NAME>, which stands for every name that starts
    with the part before '<'. default: what applies when it is unset, as the help says it ('' when
    nothing does). help: what it sets, wrapped when printed.
    """

    name: str
    default: str
    help: str

    def covers(self, name: str) -> bool:
        prefix, family, _ = self.name.partition("<")
        return name.startswith(prefix) if family else name == self.name


ENVIRONMENT: tuple[Variable, ...] = (
    Variable("MLE_BOOTSTRAP_SERVERS", "", "Kafka bootstrap servers (host:port,...); required by worker and actuator. "
             '"embedded" (or their --embedded-broker): start the embedded in-memory broker (Tansu, '
             "mle-stream[embedded]) on a free loopback port."),
    Variable("MLE_SIGNING_KEY_FILE", "", "Ed25519 private key (PEM) the worker and `command` sign with (mle-stream "
             "keys generate)."),
    Variable("MLE_SIGNING_KEY_ID", "the key file's name without extension; hmac for MLE_SIGNING_KEY",
             "the key id the signing key signs under."),
    Variable("MLE_VERIFY_KEYS_DIR", "", "directory of <key_id>.pub public keys the actuator accepts commands from "
             "and the worker accepts approvals from."),
    Variable("MLE_VERIFY_KEYS", "", "more public keys: key_id:base64url entries (mle-stream keys generate prints "
             "one), separated by commas or whitespace."),
    Variable("MLE_SIGNING_KEY", "", "instead of Ed25519 keys: one shared HMAC-SHA256 secret of at least 32 bytes "
             "that signs and verifies (openssl rand -hex 32)."),
    Variable("MLE_COMMAND_TTL", f"{DEFAULT_TTL_MS // 3_600_000}h",
             "how long a signed command stays valid (30m, 900 seconds)."),
    Variable("MLFLOW_TRACKING_URI", Settings.mlflow_tracking_uri, "MLflow tracking/registry URI."),
    Variable("MLE_TOPIC_PARTITIONS", str(Settings.partitions), "partitions for topics mle-stream creates."),
    Variable("MLE_WORKER_GROUP", Settings.worker_group, "consumer group / Faust app id of the worker."),
    Variable("MLE_ACTUATOR_GROUP", Settings.actuator_group, "consumer group of the actuator."),
    Variable("MLE_TOPIC_<NAME>", "", "topic names: " + ", ".join(
        f"{f.name.upper()} ({f.default})" for f in fields(Topics)) + "; STATE holds the worker's checkpoints "
        "(compacted)."),
    Variable("MLE_CHECKPOINT_INTERVAL", f"{Settings.checkpoint_interval_s:g}s", "how often the worker checkpoints "
             "its state (500ms, 5m or seconds): after a restart it resumes from the last checkpoint."),
    Variable("MLE_NOTIFY_WEBHOOK", "", "Slack-compatible incoming webhook the actuator reports rollbacks and failed "
             "or rejected commands to (same as actuator --notify-webhook)."),
    Variable("MLE_NOTIFY_LIMIT", "5", "webhook posts per model and kind per MLE_NOTIFY_WINDOW; the rest are summed "
             "up in one post when the window ends (same as actuator --notify-limit; 0: summaries only)."),
    Variable("MLE_NOTIFY_WINDOW", "10m", "the window of MLE_NOTIFY_LIMIT (same as actuator --notify-window)."),
    Variable("MLE_STATUS_PORT", str(STATUS_PORT), "port of the worker's live status page (same as worker "
             "--status-port; 0: none)."),
    Variable("MLE_LOG_FORMAT", "text", "text or json: one JSON object per log line (same as --log-format)."),
    Variable("MLE_METRICS_PORT", f"{WORKER_METRICS_PORT} for the worker, {ACTUATOR_METRICS_PORT} for the actuator",
             "port of the Prometheus metrics (same as --metrics-port; 0: none). The probes /livez, /readyz and "
             "/healthz are served there too (docs/health.md)."),
    Variable("MLE_METRICS_BIND", "0.0.0.0", "address of the metrics and probes (same as --metrics-bind)."),
    Variable("MLE_HEALTH_CHECKPOINT_MAX_AGE", "3 x MLE_CHECKPOINT_INTERVAL, at least 120s",
             "/livez fails when input older than this is in no checkpoint."),
    Variable("MLE_HEALTH_STALL_AFTER", "300s", "/livez fails when the worker's position in a partition with input "
             "waiting, or the actuator's loop, has not moved for this long."),
    Variable("MLE_INPUT_IDLE", f"{INPUT_IDLE_MS // 1000}s", "how long a model's labels must be silent, once the "
             "worker has read all there is of them, before its windows close by the predictions alone "
             "(docs/catch-up.md)."),
    Variable("MLE_INPUT_WAIT_MAX", f"{INPUT_WAIT_MAX_MS // 60_000}m", "how long a labels partition that is behind "
             "may deliver nothing before its models' labels count as idle anyway."),
    Variable("MLE_ALIGN_MAX_SKEW", f"{ALIGN_MAX_SKEW_MS // 60_000}m", "how far in event time a model's predictions "
             "may run ahead of its labels (or its labels ahead of its predictions) before the worker pauses the "
             "input that is ahead."),
    Variable("MLE_KAFKA_PROPERTIES_FILE", "", "TLS and SASL of every Kafka connection: a client.properties file in "
             "librdkafka's property names. See docs/kafka-security.md."),
    Variable("MLE_KAFKA_<PROPERTY>", "", "one variable per librdkafka property, over the file's: "
             + ", ".join(env_variable(p) for p in PROPERTIES) + "."),
    Variable("MLE_SCHEMA_REGISTRY_URL", "", "Confluent Schema Registry (http(s)://host:8081) whose framed Avro (0x00 "
             "+ schema id) the worker reads on predictions and labels. See docs/schema-registry.md."),
    Variable("MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "", "the registry's credentials: user:password."),
    Variable("MLE_SCHEMA_REGISTRY_SSL_CA_LOCATION", "", "the CA certificate (PEM) the registry's certificate is "
             "checked against."),
    Variable("MLE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION", "", "client certificate (PEM) for the registry."),
    Variable("MLE_SCHEMA_REGISTRY_SSL_KEY_LOCATION", "", "the client certificate's private key (PEM)."),
    Variable("MLE_SCHEMA_REGISTRY_SSL_KEY_PASSWORD", "", "the password of that private key."),
    Variable("MLE_OUTPUT_FORMAT", Settings.output_format, "avro (Avro single-object encoding) or confluent: the "
             "worker's and the actuator's outputs in Confluent framing, their schemas registered as <topic>-value "
             "(needs MLE_SCHEMA_REGISTRY_URL)."),
)


def declared(name: str) -> Variable:
    """The declaration covering variable `name`; KeyError (a bug of ours) when none does."""
    for variable in ENVIRONMENT:
        if variable.covers(name):
            return variable
    raise KeyError(f"{name} is not declared in mle_stream.config.ENVIRONMENT")


def read(name: str, env: Mapping[str, str] | None = None, unset: str = "") -> str:
    """The value of the declared variable `name` in `env` (default: the process's environment), `unset`
    when it is not set: every setting of the environment is read through here."""
    declared(name)
    return (os.environ if env is None else env).get(name, unset)


def environment_help(width: int = 100) -> str:
    """The `environment:` section of every --help, from ENVIRONMENT."""
    lines = ["environment:"]
    indent = " " * 26
    for variable in ENVIRONMENT:
        text = variable.help + (f" Default: {variable.default}." if variable.default else "")
        wrapped = textwrap.wrap(text, width - len(indent), break_on_hyphens=False)
        if len(variable.name) <= 23:
            lines.append(f"  {variable.name:<23} {wrapped[0]}")
            wrapped = wrapped[1:]
        else:
            lines.append(f"  {variable.name}")
        lines += [indent + line for line in wrapped]
    return "\n".join(lines) + "\n"

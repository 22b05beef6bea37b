"""`mle-stream status`: each model's versions, traffic, phase, windows, decisions and timeline."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.redact import redact_servers
from mle_stream.wire import client_for

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

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


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "status", "show each model's versions, traffic, phase, windows, decisions and timeline",
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


def run(args: argparse.Namespace, settings: Settings) -> int:
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

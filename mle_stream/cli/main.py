"""The `mle-stream` command: one entry point for every component.

This module assembles the parser from the command modules next to it (one per command: its flags, its
`run`, the extra it needs) and runs the command chosen."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mle_stream import __version__
from mle_stream.cli import (
    actuate,
    actuator,
    bench,
    broker,
    command,
    demo,
    ingest,
    init_topology,
    keys,
    profile,
    replay,
    status,
    validate,
    worker,
)
from mle_stream.config import Settings, environment_help, read
from mle_stream.errors import MleStreamError
from mle_stream.json_logs import FORMATS as LOG_FORMATS
from mle_stream.json_logs import JsonFormatter

# In the order of the help's list of commands.
COMMAND_MODULES = {"broker": broker, "worker": worker, "actuator": actuator, "command": command,
                   "actuate": actuate, "keys": keys, "validate": validate, "init-topology": init_topology,
                   "replay": replay, "bench": bench, "demo": demo, "status": status, "profile": profile,
                   "ingest": ingest}
COMMANDS = {name: module.run for name, module in COMMAND_MODULES.items()}
# The extra each command needs on top of the base install, which is the client only
# (pip install 'mle-stream[EXTRA]'; pyproject.toml lists what each one holds).
COMMAND_EXTRAS = {name: module.EXTRA for name, module in COMMAND_MODULES.items()}

_GLOBAL_OPTIONS_WITH_VALUE = ("--log-level", "--log-format")  # build_parser's options that take a value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mle-stream",
        description="Evaluate ML models in production from Kafka and roll bad versions back automatically.",
        epilog=environment_help(),
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
    for module in COMMAND_MODULES.values():
        module.add_parser(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line parsed; `mle-stream bench` without a mode is `mle-stream bench worker`."""
    return build_parser().parse_args(bench.with_default_mode(argv, _GLOBAL_OPTIONS_WITH_VALUE))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log_format = args.log_format or read("MLE_LOG_FORMAT").strip().lower() or "text"
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

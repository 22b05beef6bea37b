"""The `mle-stream` command line: main.py assembles the parser and runs a command; each command has
a module of its own here (its flags, its `run`, the extra it needs), common.py what they share."""

from mle_stream.cli.main import COMMAND_EXTRAS, COMMANDS, build_parser, main, parse_args

__all__ = ["COMMAND_EXTRAS", "COMMANDS", "build_parser", "main", "parse_args"]

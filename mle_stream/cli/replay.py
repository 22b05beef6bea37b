"""`mle-stream replay`: the core over recorded predictions and labels, without a broker."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command, progress
from mle_stream.config import Settings

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream replay --predictions predictions.jsonl --labels labels.jsonl -t topologies/ --json
  mle-stream replay --predictions p.jsonl --labels l.jsonl --reference ref-v1.json --reference ref-v2.json"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "replay", "run the core over recorded predictions and labels, without a broker",
                    "Backtest: merge recorded predictions and labels (JSON lines, the topics' field names) in "
                    "event-time order, run the worker's join, windows, metrics and policy over them, and print "
                    "every window and the decisions that would have been taken. Models without a topology get "
                    "a default inferred from their data (see docs/concepts.md, Replay).", EXAMPLES)
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.aliases import resolve_with_mlflow
    from mle_stream.core.topology import load_topologies
    from mle_stream.profiles import read_profile
    from mle_stream.replay import run_replay

    topologies = resolve_with_mlflow(load_topologies(args.topology) if args.topology else {},
                                     settings.mlflow_tracking_uri)
    references = [read_profile(path) for path in args.reference]
    progress(f"replaying {args.predictions}" + (f" and {args.labels}" if args.labels else "") + " ...")
    started = time.monotonic()
    code = run_replay(args.predictions, args.labels, topologies, args.json, references=references)
    progress(f"replayed in {time.monotonic() - started:.1f} s")
    return code

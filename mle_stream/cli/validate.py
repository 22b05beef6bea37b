"""`mle-stream validate`: check topology files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings
from mle_stream.errors import MleStreamError

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream validate topologies/
  mle-stream validate topologies/recommender-ab.yaml"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "validate", "check topology files and report every problem with file:line",
                    "Parse and validate topology files; exit 0 when all are valid, 2 otherwise.", EXAMPLES)
    p.add_argument("paths", nargs="+", metavar="PATH", help="topology YAML files or directories")


def run(args: argparse.Namespace, settings: Settings) -> int:
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

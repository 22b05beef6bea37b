"""`mle-stream demo`: the whole system on a simulated canary that degrades and is rolled back."""

from __future__ import annotations

import argparse
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings

EXTRA = "all"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream demo
  mle-stream demo --json --keep-running 120   # then open the status page it prints"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "demo", "run the whole system on a simulated canary that degrades and is rolled back",
                    "Start its own embedded broker (unless MLE_BOOTSTRAP_SERVERS names one), a worker, the actuator "
                    "and a simulator; register two versions "
                    "in MLflow (v1 champion at 90%% traffic, v2 challenger at 10%%); publish predictions and "
                    "delayed labels; degrade v2; watch the automatic rollback. Exit 0 only when the rollback "
                    "happened and the registry and the route agree with it.", EXAMPLES)
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.demo import run_demo

    return run_demo(settings, json_output=args.json, workdir=args.workdir, topology_path=args.topology,
                    timeout_s=args.timeout, degrade_after_s=args.degrade_after, after_rollback_s=args.keep_running)

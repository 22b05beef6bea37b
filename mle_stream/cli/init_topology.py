"""`mle-stream init-topology`: a first topology file for a new model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)


def add_parser(sub: Subcommands) -> None:
    from mle_stream.core.topology_template import ROUTING_BACKENDS, TASKS, TEMPLATE_MODES

    p = add_command(sub, "init-topology", "write a first topology file for a new model",
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


def run(args: argparse.Namespace, settings: Settings) -> int:
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

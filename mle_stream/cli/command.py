"""`mle-stream command`: an operator's signed command, published or written to a file."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.operator_commands import OPERATOR_KINDS

EXTRA = "actuator"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

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


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "command", "publish a signed command by hand: rollback, promote, set-traffic, approve",
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


def run(args: argparse.Namespace, settings: Settings) -> int:
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

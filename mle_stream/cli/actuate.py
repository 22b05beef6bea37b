"""`mle-stream actuate`: apply one command file now, without Kafka."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command, add_routing_arguments, routing_options
from mle_stream.config import Settings
from mle_stream.errors import ConfigError

EXTRA = "actuator"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

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

ACTUATE_EXAMPLES = """\
examples:
  mle-stream command rollback --model fraud-detector --baseline 1 --candidate 2 \\
      --reason "error rate 4% on v2" --out rollback.json
  mle-stream actuate --command rollback.json -t topologies/ --gitops-repo ../gitops --dry-run
  mle-stream actuate --command rollback.json -t topologies/ --gitops-repo ../gitops"""


# Flags that say where one model's route lives, for commands that may run without a topology
# (mle-stream actuate): the topology's `routing` keys.
ROUTE_FLAGS = ("backend", "namespace", "name", "service", "subset", "host", "manifest", "gateway")


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and the other `routing:` keys as flags, instead of a topology file."""
    group = parser.add_argument_group(
        "route from flags (instead of --topology)",
        "The command's model's routing section, as flags: the same keys and defaults as a topology's "
        "`routing:` (docs/topologies.md). Templates take {model} and {version}.")
    group.add_argument("--backend", choices=("gitops", "gateway-api", "istio", "kserve"),
                       help="where the model's traffic split lives")
    group.add_argument("--namespace", help="namespace of the route object (default: default)")
    group.add_argument("--name", help="gateway-api, istio, kserve: the object's name template (default: {model})")
    group.add_argument("--service", help="gitops, gateway-api: Service of one version (default: {model}-v{version})")
    group.add_argument("--subset", help="istio: DestinationRule subset of one version (default: v{version})")
    group.add_argument("--host", help="istio: destination host of a new route entry (default: {model})")
    group.add_argument("--manifest", help="gitops: manifest path in the repository (default: routes/{model}.yaml)")
    group.add_argument("--gateway", help="gitops: parentRef of a new manifest (default: ml-gateway)")


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "actuate", "apply one command file now, without Kafka, and print its rollout event",
                    textwrap.fill(ACTUATE_HELP, 100, break_on_hyphens=False) + "\n\n" + ACTUATE_EXAMPLES)
    p.add_argument("--command", dest="command_file", required=True, type=Path, metavar="FILE",
                   help="a command file (mle-stream command ... --out FILE)")
    p.add_argument("--topology", "-t", action="append", metavar="PATH",
                   help="topology YAML file(s) or directories: they say where each model's route lives "
                        "(or give the route with --backend and its flags below)")
    add_routing_arguments(p)
    add_route_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="report what would change (status DRY_RUN), change nothing")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from mle_stream import wire
    from mle_stream.actuator.backends import build_routing, topology_for_route
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
    route = {key: getattr(args, key) for key in ROUTE_FLAGS if getattr(args, key) is not None}
    if args.topology and route:
        raise ConfigError(f"give the route by --topology or by flags ({', '.join(f'--{k}' for k in route)}), not both")
    if args.topology:
        topologies = load_topologies(args.topology)
    elif "backend" in route:
        topologies = {command.model: topology_for_route(route, command.model, command.baseline_version,
                                                        command.candidate_version, source="the route flags")}
    else:
        raise ConfigError("say where the model's route lives: --topology FILE, or --backend and its flags")
    verifier = verifier_from_settings(settings)
    routing = build_routing(topologies, routing_options(args))
    actuator = Actuator(routing, MlflowRegistry(settings.mlflow_tracking_uri), verifier, dry_run=args.dry_run)
    event = actuator.handle(command)
    print(json.dumps(wire.to_json_dict(event), indent=2, ensure_ascii=False))
    return {RolloutStatus.REJECTED: 3, RolloutStatus.FAILED: 1}.get(event.status, 0)

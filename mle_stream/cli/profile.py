"""`mle-stream profile build`: the reference profile (drift baseline) of a model version."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings
from mle_stream.errors import MleStreamError
from mle_stream.redact import redact_uri

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

PROFILE_BUILD_HELP = (
    "Read the training rows of a model version from DATA (.csv with a header row, .jsonl with "
    "one JSON object per line, or .parquet) and build its reference profile: numeric columns get "
    "quantile bin edges (--bins), counts per bin and moments; text and boolean columns get the counts "
    "of their --top-k most frequent categories plus 'other'; the score column (--score-column, if "
    "present) gets a numeric sketch of its own. Leave label, id and timestamp columns out with "
    "--exclude. Columns without any value are skipped and listed. Writes the profile as JSON (-o) "
    "and/or stores it in MLflow (--log-to-mlflow) as an artifact of the run the version was "
    "registered from, tagged mle_stream.reference_profile on the version (the worker does not read "
    "profiles yet)."
)

EXAMPLES = """\
examples:
  mle-stream profile build train.csv --model fraud-detector --version 2 --exclude label,id -o ref.json
  mle-stream profile build train.parquet --model fraud-detector --version 2 --log-to-mlflow"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "profile", "build the reference profile (drift baseline) of a model version",
                    "Reference profiles: the training data of a model version reduced to drift sketches, the "
                    "baseline live windows are compared with.", EXAMPLES)
    profile_sub = p.add_subparsers(dest="profile_command", required=True, metavar="SUBCOMMAND")
    p = add_command(profile_sub, "build", "profile training rows from a csv, jsonl or parquet file",
                    textwrap.fill(PROFILE_BUILD_HELP, 100, break_on_hyphens=False), EXAMPLES)
    p.add_argument("data", type=Path, metavar="DATA", help="training rows: .csv, .jsonl (.ndjson) or .parquet")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", required=True, help="model version the data trained (MLflow version number)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the profile JSON to FILE")
    p.add_argument("--score-column", default="score", metavar="NAME",
                   help="column holding the model's score (default: score; profiled only if present)")
    p.add_argument("--exclude", action="append", default=[], metavar="COLUMN[,COLUMN...]",
                   help="columns to leave out, e.g. the label and id columns (repeatable, or comma-separated)")
    p.add_argument("--bins", type=int, default=100, metavar="N", help="quantile bins per numeric column (default 100)")
    p.add_argument("--top-k", type=int, default=20, metavar="K",
                   help="categories kept per categorical column, the rest count as 'other' (default 20)")
    p.add_argument("--log-to-mlflow", action="store_true",
                   help="store the profile with the model version in MLflow (MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.profiles import build_profile_from_file, log_to_mlflow, write_profile

    if args.output is None and not args.log_to_mlflow:
        raise MleStreamError("profile build: nothing to do: give -o FILE and/or --log-to-mlflow")
    if args.bins < 1 or args.top_k < 1:
        raise MleStreamError(f"profile build: --bins and --top-k must be >= 1, got {args.bins} and {args.top_k}")
    exclude = [name.strip() for value in args.exclude for name in value.split(",") if name.strip()]
    profile = build_profile_from_file(args.data, model=args.model, version=args.version,
                                      score_column=args.score_column or None, exclude=exclude,
                                      bins=args.bins, top_k=args.top_k)
    if args.score_column and profile.score is None and args.score_column not in profile.skipped:
        print(f"note: {args.data} has no column {args.score_column!r}: the profile has no score distribution",
              file=sys.stderr)
    if args.output is not None:
        try:
            write_profile(profile, args.output)
        except OSError as exc:
            raise MleStreamError(f"{args.output}: cannot write: {exc.strerror}") from None
        print(f"wrote {args.output}: {profile.summary()}")
    if args.log_to_mlflow:
        uri = log_to_mlflow(profile, settings.mlflow_tracking_uri)
        print(f"stored in MLflow at {redact_uri(settings.mlflow_tracking_uri)}: {uri} "
              f"(tag mle_stream.reference_profile on {args.model} version {args.version})")
    return 0

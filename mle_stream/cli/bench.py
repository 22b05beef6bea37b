"""`mle-stream bench worker|memory|drift|decisions`: the benchmarks, one subcommand each with only its
own flags. `mle-stream bench` alone (or followed by flags) is `mle-stream bench worker`.

The bench modules (mle_stream/bench/) are imported when a bench runs, never when the parser is
built: the other commands' start-up does not load them."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mle_stream.cli.common import Subcommands, add_command, progress
from mle_stream.config import Settings
from mle_stream.errors import MleStreamError

EXTRA = "all"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

DEFAULT_MODE = "worker"

DESCRIPTION = (
    "Benchmarks, one per MODE (default: worker); `mle-stream bench MODE --help` says what each measures "
    "and prints.")

EXAMPLES = """\
examples:
  mle-stream bench --json
  mle-stream bench memory --events 10000000 --json
  benchmarks/bench-drift-env && mle-stream bench drift --json
  mle-stream bench decisions --json
  mle-stream bench decisions --rollouts 5000 --alpha 0.05 --seed 7"""

WORKER_DESCRIPTION = (
    "mle-stream bench [worker] (the default): publish N predictions (10 numeric features each) and "
    "labels for ~90% of them through the client into fresh topics, then measure over the same messages (1) the "
    "floor: a raw confluent-kafka consumer that only decodes them, from its first message to the last record "
    "decoded, and (2) the real worker (Faust) in its own process, from its first message to the last record "
    "processed; start-up and group join are excluded and reported as startup_s. Prints a table, or with --json "
    "at least events_per_s, baseline_events_per_s, ratio (= events_per_s / baseline_events_per_s) and "
    "peak_rss_mb of the worker process. The default size takes about 40 s on a 2-core machine. The bench "
    "creates its own topics, groups and signing key, and its own embedded broker unless --bootstrap or "
    "MLE_BOOTSTRAP_SERVERS names one: of the variables below only MLE_BOOTSTRAP_SERVERS and "
    "MLE_TOPIC_PARTITIONS apply.")
MEMORY_DESCRIPTION = (
    "mle-stream bench memory: the worker's memory bound over a long run: it consumes while the bench "
    "produces N predictions (default 1,000,000) of the same traffic, and reports the worker process's "
    "RSS when N/10 and N predictions are processed, and with --json at least rss_growth (= (RSS at N - "
    "RSS at N/10) / RSS at N/10), rss_at_tenth_mb, rss_at_end_mb, events_at_tenth and events_at_end. "
    "About 1 min at the default size, 10 min at --events 10000000 (1M -> 10M); no "
    "events/s (the producer sets the pace). The default mode reports rss_growth too, over its own "
    "N/10 -> N.")
DRIFT_DESCRIPTION = (
    "mle-stream bench drift: compute the drift table (reference profile, sketches, decide_drift) for "
    "--rows current rows x --features numeric columns against --reference-rows reference rows, and "
    "time it next to Evidently's DataDriftPreset (PSI and normed Wasserstein forced on every column, "
    "and the default preset) on the same seeded frames, Evidently running in a bench-only venv "
    "(create it with benchmarks/bench-drift-env). Prints a table, or with --json at least seconds, "
    "evidently_seconds, speedup and max_relative_difference (ours vs Evidently's PSI and Wasserstein "
    "on the same statistic; see mle_stream/bench/drift.py). About 1.5 min at the default size.")
DECISIONS_DESCRIPTION = (
    "mle-stream bench decisions: simulate --rollouts A/A rollouts (canary as good as the baseline) and "
    "--rollouts A/B rollouts (canary error rate 2% -> 4% from the start, 10% of the traffic), "
    "--windows windows of 1000 labeled predictions each, and roll back with (i) the sequential "
    "error-rate test of core/sequential.py at --alpha, looked at after every window, (ii) a "
    "Flagger-style fixed threshold (a window error rate above 3% is a failed check, 5 failed checks "
    "roll back), (iii) the oracle CUSUM calibrated to the same false-alarm rate. Then the same for "
    "each metric family (--family, default all), each under its named degradation: the sequential "
    "check, a fixed threshold of that metric (as written and calibrated to alpha) and, where one exists, "
    "the oracle CUSUM, both without a margin and for the check's own hypotheses (against candidates on "
    "the margin's boundary, also simulated). Prints a table per family, or with --json at least alpha, "
    "false_rollback_rate, "
    "power, median_delay_samples, p95_delay_samples, cusum_median_delay_samples, "
    "fixed_threshold_false_rollback_rate, fixed_threshold_median_delay_samples and families (per family "
    "and method the same four numbers and target_met; delays in canary samples; see "
    "mle_stream/bench/decisions.py and docs/decisions.md). About 2.5 min at the default size (about 5 s "
    "with --family error_rate); no broker.")


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "bench", "measure the worker's events/s against a raw-consumer floor, drift against "
                    "Evidently, or rollback decisions against Flagger-style thresholds and the oracle CUSUM",
                    DESCRIPTION, EXAMPLES)
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE")

    worker = add_command(modes, "worker", "the worker's throughput (the default)", _wrap(WORKER_DESCRIPTION),
                         "examples:\n  mle-stream bench --json\n  mle-stream bench worker --events 50000 --models 4")
    _add_kafka_arguments(worker, "predictions to publish and measure (default 200,000)")
    worker.add_argument("--profile", metavar="FILE",
                        help="write a cProfile of the worker's measured interval to FILE (slows the worker down)")

    memory = add_command(modes, "memory", "the worker's RSS growth over a long run", _wrap(MEMORY_DESCRIPTION),
                         "examples:\n  mle-stream bench memory --events 10000000 --json")
    _add_kafka_arguments(memory, "predictions to publish and measure (default 1,000,000)")

    drift = add_command(modes, "drift", "the drift table against Evidently", _wrap(DRIFT_DESCRIPTION),
                        "examples:\n  mle-stream bench drift --json   # once benchmarks/bench-drift-env made the "
                        "Evidently venv\n  mle-stream bench drift --rows 100000 --features 4")
    drift.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    drift.add_argument("--rows", type=int, metavar="N", help="current rows (default 1,000,000)")
    drift.add_argument("--reference-rows", type=int, metavar="N", help="reference rows (default 100,000)")
    drift.add_argument("--features", type=int, metavar="N", help="numeric features (default 10)")
    drift.add_argument("--evidently-python", type=Path, metavar="PATH",
                       help="the python of the Evidently venv (default: the one benchmarks/bench-drift-env "
                            "creates, ~/.cache/mle-stream/bench-drift-evidently/bin/python)")

    decisions = add_command(modes, "decisions", "false rollbacks and detection delay of the sequential test",
                            _wrap(DECISIONS_DESCRIPTION), "examples:\n  mle-stream bench decisions --json\n"
                            "  mle-stream bench decisions --rollouts 5000 --alpha 0.05 --seed 7\n"
                            "  mle-stream bench decisions --family precision --family roc_auc --rollouts 200")
    decisions.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    decisions.add_argument("--rollouts", type=int, metavar="N", help="A/A rollouts, and as many A/B rollouts "
                                                                     "(default 1000)")
    decisions.add_argument("--alpha", type=float, metavar="A", help="the test's false-rollback rate (default 0.01)")
    decisions.add_argument("--windows", type=int, metavar="N", help="windows per rollout, the horizon (default 60)")
    decisions.add_argument("--min-relative-increase", type=float, metavar="M",
                           help="margin: no rollback for a candidate/baseline error-rate ratio below 1+M "
                                "(default 0.1)")
    decisions.add_argument("--seed", type=int, metavar="N", help="random seed (default 20261129)")
    decisions.add_argument("--family-margin", type=float, metavar="M",
                           help="the margin of every rate and mean family's check: no rollback for a ratio below "
                                "1+M (default: each check's own, 0.1 for rates, 0.05 for means)")
    decisions.add_argument("--family", action="append", metavar="NAME",
                           help="a metric family to run (repeatable; default: all of error_rate, accuracy, "
                                "precision, recall, brier_score, mae, rmse, latency_mean_ms, latency_p99_ms, "
                                "roc_auc)")


def _wrap(description: str) -> str:
    return textwrap.fill(description, 100, break_on_hyphens=False)


def _add_kafka_arguments(p: argparse.ArgumentParser, events_help: str) -> None:
    """The flags of the benches that run the worker on Kafka."""
    p.add_argument("--events", type=int, metavar="N", help=events_help)
    p.add_argument("--models", type=int, default=1, metavar="N", help="models the predictions are spread over "
                                                                       "(default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka to use (default: MLE_BOOTSTRAP_SERVERS, else a new embedded broker)")


def with_default_mode(argv: Sequence[str], global_options_with_value: Sequence[str]) -> list[str]:
    """`argv` with DEFAULT_MODE after `bench` when no mode follows it (`mle-stream bench --json`), so
    that the default mode keeps its short form. Only the command position counts: the first argument
    that is neither a global option nor the value of one."""
    argv = list(argv)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in global_options_with_value else 1
    if i < len(argv) and argv[i] == "bench":
        following = argv[i + 1] if i + 1 < len(argv) else None
        if following is None or (following.startswith("-") and following not in ("-h", "--help")):
            argv.insert(i + 1, DEFAULT_MODE)
    return argv


def run(args: argparse.Namespace, settings: Settings) -> int:
    result, report = RUNS[args.mode](args, settings)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


Report = tuple[dict[str, Any], Callable[[dict[str, Any]], str]]  # the result and how to print it as a table


def _worker(args: argparse.Namespace, settings: Settings) -> Report:
    from mle_stream.bench.throughput import DEFAULT_EVENTS, format_report, run_bench

    return run_bench(settings, events=DEFAULT_EVENTS if args.events is None else args.events, models=args.models,
                     bootstrap=args.bootstrap, profile=args.profile), format_report


def _memory(args: argparse.Namespace, settings: Settings) -> Report:
    from mle_stream.bench.throughput import DEFAULT_MEMORY_EVENTS, format_memory_report, run_memory_bench

    events = DEFAULT_MEMORY_EVENTS if args.events is None else args.events
    progress(f"bench memory: producing {events:,} predictions while the worker consumes them (about "
             f"{max(1, round(events / 1_000_000))} min) ...")
    return run_memory_bench(settings, events=events, models=args.models, bootstrap=args.bootstrap), \
        format_memory_report


def _drift(args: argparse.Namespace, settings: Settings) -> Report:
    from mle_stream.bench.drift import (
        DEFAULT_FEATURES,
        DEFAULT_REFERENCE_ROWS,
        DEFAULT_ROWS,
        format_drift_report,
        run_drift_bench,
    )

    def given_or(value: int | None, default: int) -> int:
        return default if value is None else value

    progress("bench drift: writing the frames, then timing ours and Evidently's reports (about 1.5 min at "
             "the default size) ...")
    return run_drift_bench(rows=given_or(args.rows, DEFAULT_ROWS),
                           reference_rows=given_or(args.reference_rows, DEFAULT_REFERENCE_ROWS),
                           features=given_or(args.features, DEFAULT_FEATURES),
                           evidently_python=args.evidently_python), format_drift_report


def _decisions(args: argparse.Namespace, settings: Settings) -> Report:
    from mle_stream.bench.decisions import format_decisions_report, run_decisions_bench

    chosen = {name: getattr(args, name) for name in ("rollouts", "alpha", "windows", "min_relative_increase", "seed",
                                                   "family_margin")
              if getattr(args, name) is not None}
    progress("bench decisions: simulating the A/A, margin and A/B rollouts (about 2.5 min for every family at the "
             "default size) ...")
    try:
        return run_decisions_bench(families=args.family, **chosen), format_decisions_report
    except ValueError as exc:
        raise MleStreamError(str(exc)) from None


RUNS = {"worker": _worker, "memory": _memory, "drift": _drift, "decisions": _decisions}

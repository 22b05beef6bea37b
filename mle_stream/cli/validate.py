"""`mle-stream validate`: check topology files; with --simulate, estimate each check's false-rollback
rate and detection delay on synthetic traffic (core/simulation.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mle_stream.cli.common import Subcommands, add_command, progress
from mle_stream.config import Settings
from mle_stream.errors import ConfigError, MleStreamError

if TYPE_CHECKING:  # imported when it runs: validate without --simulate needs no numpy
    from mle_stream.core.simulation import Mapper

EXTRA = "worker"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream validate topologies/
  mle-stream validate topologies/recommender-ab.yaml
  mle-stream validate --simulate --traffic 50/s --label-delay 1m..1h --unlabeled 5% topologies/recommender-ab.yaml
  mle-stream validate --simulate --degrade roc_auc=-0.02 --degrade latency_p99_ms=+20% --json topologies/
  mle-stream validate --simulate --predictions recorded-predictions.jsonl --labels recorded-labels.jsonl topologies/"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "validate", "check topology files and report every problem with file:line",
                    "Parse and validate topology files; exit 0 when all are valid, 2 otherwise. With --simulate, "
                    "also replay synthetic traffic through each check and report how often it rolls back a "
                    "candidate as good as the baseline (A/A) and how fast it catches a degraded one "
                    "(see docs/simulate.md).", EXAMPLES)
    p.add_argument("paths", nargs="+", metavar="PATH", help="topology YAML files or directories")
    s = p.add_argument_group("simulation")
    s.add_argument("--simulate", action="store_true",
                   help="estimate each check's false-rollback rate and detection delay by simulation")
    s.add_argument("--runs", type=int, default=200, metavar="N", help="simulated rollouts per check and case "
                   "(default 200)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same numbers")
    s.add_argument("--traffic", metavar="RATE",
                   help="predictions per second to both versions: 50/s, 3000/m, 100000/h (default 20/s, or the "
                        "recording's)")
    s.add_argument("--share", metavar="PERCENT",
                   help="the candidate's share of the traffic, e.g. 10%%; default: the topology's rollout steps "
                        "(followed as the policy takes them), else 10%%")
    s.add_argument("--label-delay", metavar="LOW..HIGH",
                   help="label delay, log-uniform between the two (e.g. 1m..1h), or one duration (default 1s..1m, "
                        "or the recording's 5th..95th percentiles)")
    s.add_argument("--unlabeled", metavar="PERCENT",
                   help="share of predictions never labeled (default 5%%, or the recording's)")
    s.add_argument("--predictions", type=Path, metavar="FILE",
                   help="recorded predictions (JSON lines, as mle-stream replay reads them): traffic measured from "
                        "them; with --labels, label delays and the unlabeled share too (flags given win)")
    s.add_argument("--labels", type=Path, metavar="FILE", help="recorded labels, with --predictions")
    s.add_argument("--windows", type=int, metavar="N",
                   help="windows per rollout; default: every rollout step's windows, at least 24")
    s.add_argument("--degrade", action="append", default=[], metavar="METRIC=CHANGE",
                   help="the candidate's degradation: error_rate=2x, roc_auc=-0.02, latency_p99_ms=+20%%, mae=+10%% "
                        "(repeatable; default: per check, twice what the check allows)")
    s.add_argument("--baseline", action="append", default=[], metavar="METRIC=VALUE",
                   help="the baseline's traffic: roc_auc=0.9, error_rate=0.1, latency_p99_ms=90, mae=8, "
                        "serving_error_rate=0.001 (repeatable; a metric a topology's task lacks is ignored for it; "
                        "default: see docs/simulate.md)")
    s.add_argument("--alpha", type=float, metavar="RATE",
                   help="the false-rollback rate above which a check is warned about; default: the smallest "
                        "alpha of the topology's sequential checks, else 0.05 (a sequential check: its own alpha)")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="processes the runs are spread over (default: one per CPU, here %(default)s); the numbers "
                        "do not depend on it")
    s.add_argument("--strict", action="store_true", help="exit 1 when a check is warned about")
    s.add_argument("--json", action="store_true", help="print one JSON object (with --simulate)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.simulate and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if not args.simulate or args.jobs == 1:
        return _validate(args, map)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.jobs) as pool:
        # A few chunks per process: a run is ~0.1 s, and its arguments are pickled once per chunk.
        return _validate(args, lambda run, seeds: pool.map(run, seeds, chunksize=max(1, len(seeds) // (4 * args.jobs))))


def _validate(args: argparse.Namespace, mapper: Mapper) -> int:
    from mle_stream.core.topology import load_topology

    scenario, measured = _scenario(args) if args.simulate else (None, None)
    if measured is not None and not args.json:
        print(f"measured from {args.predictions}" + (f" and {args.labels}" if args.labels else "") + f": "
              f"{measured.predictions} predictions, {measured.per_s:.4g}/s"
              + (f"; {measured.labels} labels, delays {measured.label_delay_ms[0] / 1000:g}.."
                 f"{measured.label_delay_ms[1] / 1000:g} s (5th..95th percentile), {measured.unlabeled:.1%} "
                 f"unlabeled" if args.labels else ""))
    files = [f for p in map(Path, args.paths) for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    failed = warned = 0
    reports: list[dict[str, Any]] = []
    for f in files:
        try:
            t = load_topology(f)
        except MleStreamError as exc:
            failed += 1
            print(exc, file=sys.stderr)
            reports.append({"file": str(f), "valid": False, "error": str(exc)})
            continue
        base = f"@{t.baseline_alias}" if t.baseline_alias else f"v{t.baseline_version}"
        cand = f"@{t.candidate_alias}" if t.candidate_alias else f"v{t.candidate_version}"
        if not args.json:
            print(f"{f}: ok (model {t.model}, {t.task}, {t.mode}, baseline {base}, candidate {cand}, "
                  f"{len(t.checks)} check(s))")
        if scenario is not None:
            report = _simulate(f, t, scenario, args.json, mapper)
            warned += sum(c["warning"] for c in report["checks"])
            reports.append(report)
    if args.json and scenario is not None:
        doc: dict[str, Any] = {"scenario": _scenario_json(scenario), "topologies": reports}
        if measured is not None:
            doc["measured"] = {"predictions_file": str(args.predictions),
                               "labels_file": None if args.labels is None else str(args.labels),
                               **asdict(measured)}
        json.dump(doc, sys.stdout, indent=2, allow_nan=False)
        print()
    if failed or not files:
        return 2
    return 1 if args.strict and warned else 0


def _scenario(args: argparse.Namespace) -> tuple[Any, Any]:
    """The simulation's settings, and what was measured from a recording (None without one)."""
    from mle_stream.core.durations import parse_duration_ms
    from mle_stream.core.simulation import Degradation, Scenario, Traffic

    try:
        measured = _measured(args) if args.predictions else None
        label_delay = args.label_delay or (None if measured is None or not args.labels else
                                           "{}ms..{}ms".format(*measured.label_delay_ms)) or "1s..1m"
        low, sep, high = label_delay.partition("..")
        delays = (parse_duration_ms(low), parse_duration_ms(high if sep else low))
        per_s = _rate(args.traffic) if args.traffic else measured.per_s if measured else 20.0
        unlabeled = (_percent(args.unlabeled, "--unlabeled") if args.unlabeled
                     else measured.unlabeled if measured and args.labels else 0.05)
        traffic = Traffic(per_s, None if args.share is None else _percent(args.share, "--share"),
                          delays, unlabeled, args.windows)
        if args.runs < 1:
            raise ValueError(f"--runs must be at least 1, got {args.runs}")
        if args.windows is not None and args.windows < 1:
            raise ValueError(f"--windows must be at least 1, got {args.windows}")
        if args.alpha is not None and not 0 < args.alpha < 1:
            raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
        degradations = tuple(Degradation.parse(d) for d in args.degrade)
        settings = tuple(Degradation.parse(b) for b in args.baseline)
        relative = [b for b, d in zip(args.baseline, settings) if d.kind != "abs"]
        if relative:
            raise ValueError(f"--baseline {relative[0]}: state the baseline's value, e.g. roc_auc=0.9")
    except ValueError as exc:
        raise ConfigError(f"mle-stream validate --simulate: {exc}") from exc
    return Scenario(traffic=traffic, baseline_settings=settings, degradations=degradations, runs=args.runs,
                    seed=args.seed, alpha=args.alpha), measured


def _measured(args: argparse.Namespace) -> Any:
    """Traffic figures of the recording given with --predictions (and --labels), read as the replay reads it."""
    import numpy as np

    from mle_stream.core.simulation import measure_recording
    from mle_stream.replay import read_jsonl

    errors: list[str] = []
    predictions = read_jsonl(args.predictions, "prediction", errors)
    labels = read_jsonl(args.labels, "label", errors) if args.labels else []
    if errors:
        raise ValueError(f"{len(errors)} unreadable record(s) in the recording; the first: {errors[0]}")
    return measure_recording(np.array([p.timestamp for p in predictions], dtype=np.int64),
                             [p.prediction_id for p in predictions],
                             np.array([lab.timestamp for lab in labels], dtype=np.int64),
                             [lab.prediction_id for lab in labels])


_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _rate(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+)\s*(?:/\s*([smh]))?\s*", text)
    if match is None:
        raise ValueError(f"--traffic: expected a rate like 50/s, 3000/m or 100000/h, got {text!r}")
    return float(match.group(1)) / _UNITS_S[match.group(2) or "s"]


def _percent(text: str, flag: str) -> float:
    value = text.strip()
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"{flag}: expected a percentage like 5% (or a fraction like 0.05), got {text!r}") from None


def _scenario_json(scenario: Any) -> dict[str, Any]:
    t = scenario.traffic
    return {"runs": scenario.runs, "seed": scenario.seed, "traffic_per_s": t.per_s, "candidate_share": t.share,
            "label_delay_ms": list(t.label_delay_ms), "unlabeled": t.unlabeled, "windows": t.windows,
            "baseline": [str(d) for d in scenario.baseline_settings],
            "degrade": [str(d) for d in scenario.degradations], "generator": asdict(scenario.baseline)}


def _simulate(path: Path, topology: Any, scenario: Any, as_json: bool, mapper: Mapper) -> dict[str, Any]:
    from mle_stream.core.simulation import horizon, initial_share, simulate_topology

    t, traffic = topology, scenario.traffic
    windows = horizon(t, traffic)
    followed = " (then the rollout's steps as the policy takes them)" if traffic.share is None and t.rollout else ""
    # Shadow mode has no share: production answers every request and the shadow answers it too.
    who = (f"{traffic.per_s:g} requests/s, the shadow answers every request (mirrored)" if t.mode == "shadow" else
           f"{traffic.per_s:g} predictions/s, candidate share {initial_share(t, traffic):.0%}{followed}")
    lo, hi = traffic.label_delay_ms
    setting = (f"{scenario.runs} runs per check, {who}, labels after {lo / 1000:g}..{hi / 1000:g} s, "
               f"{traffic.unlabeled:.0%} never labeled, {windows} windows of {t.window_size_ms / 1000:g} s")
    if not as_json:
        print(f"  simulated: {setting}")
    try:
        results = simulate_topology(t, scenario, lambda name: progress(f"simulating {path}: check {name} ..."),
                                    mapper)
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot simulate: {exc}") from exc
    checks = []
    for r in results:
        doc = {"check": r.check, "metric": r.metric, "action": r.action, "alpha": r.alpha,
               "degradation": r.degradation, "warning": r.warning, "fix": r.fix,
               "false_rollback": _rate_json(r.false_rollback), "detection": _rate_json(r.detection),
               "aa_window_failures": r.window_failures, "aa_window_inconclusive": r.window_inconclusive,
               "aa_candidate_samples_per_window": r.samples_per_window,
               "delay": asdict(r.delay)}
        checks.append(doc)
        if not as_json:
            print(_line(r))
    return {"file": str(path), "valid": True, "model": t.model, "setting": setting, "checks": checks}


def _rate_json(rate: Any) -> dict[str, Any]:
    return {"rate": rate.value if rate.runs else None, "hits": rate.hits, "runs": rate.runs,
            "ci95": [rate.low, rate.high]}


def _line(r: Any) -> str:
    fr, dt, d = r.false_rollback, r.detection, r.delay
    what = "rollbacks" if r.action == "rollback" else "holds"
    text = f"  {r.check} ({r.metric}): false {what} {fr.value:.1%} [{fr.low:.1%}, {fr.high:.1%}] of A/A runs"
    if r.window_failures is not None:
        few = f", too few samples in {r.window_inconclusive:.1%}" if r.window_inconclusive else ""
        text += f" (FAIL in {r.window_failures:.1%} of their windows{few})"
    text += "; "
    text += (f"{r.degradation} detected in {dt.value:.1%} [{dt.low:.1%}, {dt.high:.1%}]" if dt.runs
             else r.degradation)
    if d.median_windows is not None:
        text += (f", after {d.median_windows:g} windows (p95 {d.p95_windows:g}) and {d.median_samples:,.0f} "
                 f"candidate samples (p95 {d.p95_samples:,.0f})")
    if r.warning:
        verb = "rolls back" if r.action == "rollback" else "holds"
        text += (f"\n    warning: {r.check} {verb} {fr.value:.1%} of healthy candidates, above alpha "
                 f"{r.alpha:g}; fix: {r.fix}")
    if r.window_inconclusive is not None and r.window_inconclusive >= MOSTLY_INCONCLUSIVE:
        text += (f"\n    note: {r.check} had too few samples to judge {r.window_inconclusive:.0%} of the A/A windows "
                 f"(min_samples {r.min_samples}; it read {r.samples_per_window:,.0f} candidate samples a window on "
                 f"average): at this traffic it can neither roll back a worse candidate nor pass a good one. State "
                 f"your traffic (--traffic), or lower min_samples, or lengthen windows.size")
    return text


MOSTLY_INCONCLUSIVE = 0.5  # the share of A/A windows without a verdict above which the output says so

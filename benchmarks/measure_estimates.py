"""Label-free estimates (docs/estimates.md): how far they are from the realized metrics on a
calibrated stream and on one whose calibration drifted, and what they cost the evaluator.

Accuracy: a binary model (scores Beta(2, 3), decision at 0.5) through ModelEvaluator with an
estimates section; labels are positive with probability the score (calibrated) or, after the
reference, half of it (drifted: the same scores now mean half the risk). For each closed window of
the baseline after the calibration froze: estimated - realized per metric, as mean, standard
deviation and largest absolute value, and for the rates (accuracy, precision, recall) the share of
windows whose error is within 2 binomial standard errors of the realized rate (sqrt(r (1 - r) / n),
n the rows it is a share of): about 95% if the window's sampling were the only error.

Multiclass (--task multiclass or both): a 3-class model (class shares Dirichlet(0.7, 1, 1.3),
decided by argmax) with `classes: [a, b, c]`; labels drawn from the shares (calibrated) or, after
the reference, half of them replaced by a uniformly drawn class (drifted: the same shares now mean
less). Estimated minus realized per baseline window, the realized metrics scikit-learn's over the
window's labeled rows: accuracy, macro precision, recall and F1 over the three classes, and
roc_auc_score(multi_class="ovr", average="macro"). Also the estimate state's size: the joint keys
(decided class, bin of each class's share) a window holds, for 3 and for 10 classes.

Cost: the evaluator's time per prediction (predictions, their labels, advance) with and without
the estimates section, on 500-row batches, best of --runs (alternated), per task.

    PYTHONPATH=. python benchmarks/measure_estimates.py [--task binary|multiclass|both] [--windows N]
        [--per-window N] [--events N] [--runs N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from mle_stream.core.columns import LabelColumns, PredictionColumns
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, Prediction
from mle_stream.core.topology import parse_topology

NOW = 10**12
TOPOLOGY = ('model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
            'windows: {size: 1s, grace: 0s, retention: 1s}\nlabels: {max_delay: 5s}\n')
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def batches(windows: int, per_window: int, seed: int, drift_after: int | None,
            size: int = 500) -> list[tuple[PredictionColumns, LabelColumns]]:
    rng = np.random.default_rng(seed)
    out = []
    for w in range(windows):
        score = rng.beta(2, 3, per_window)
        p = score / 2 if drift_after is not None and w >= drift_after else score
        y = rng.random(per_window) < p
        ts = w * 1000 + np.sort(rng.integers(0, 1000, per_window))
        version = np.where(rng.random(per_window) < 0.5, "1", "2")
        for lo in range(0, per_window, size):
            rows = range(lo, min(lo + size, per_window))
            preds = [Prediction(prediction_id=f"w{w}-{i}", model="m", version=str(version[i]), timestamp=int(ts[i]),
                                score=float(score[i])) for i in rows]
            labels = [Label(f"w{w}-{i}", "m", int(ts[i]) + 1, bool(y[i])) for i in rows]
            out.append((PredictionColumns.from_records(preds), LabelColumns.from_records(labels)))
    return out


def run(topology: str, data: list[tuple[PredictionColumns, LabelColumns]]) -> tuple[float, list[Any]]:
    ev = ModelEvaluator(parse_topology(topology))
    windows = []
    start = time.perf_counter()
    for preds, labels in data:
        ev.add_prediction_columns(preds, NOW)
        ev.add_label_columns(labels, NOW)
        windows += ev.advance(NOW).windows
    windows += ev.close_all(NOW).windows
    return time.perf_counter() - start, windows


# A rate's binomial standard error: the rows it is a share of (labeled, decided positive, positive).
RATES = {"accuracy": None, "precision": "positive_rate", "recall": "label_rate"}


def binomial_se(window: Any, metric: str) -> float:
    value, share = window.metrics[metric], RATES[metric]
    n = window.labeled * (1.0 if share is None else window.metrics[share])
    return float(np.sqrt(value * (1 - value) / n))


def baseline_windows(windows: list[Any], drift_after: int | None, label: str, per_window: int) -> list[Any]:
    """The baseline's closed, labeled windows with an estimate (after the drift, when there is one)."""
    closed = [w for w in windows if w.status == "CLOSED" and w.version == "1" and w.segment is None
              and w.metrics["estimated_accuracy"] is not None and w.labeled > 0
              and (drift_after is None or w.window_start >= drift_after * 1000)]
    print(f"{label}: {len(closed)} baseline windows of ~{per_window // 2} predictions")
    if not closed:
        print("  none closed after the calibration froze: give more --windows")
    return closed


def print_errors(metric: str, errors: np.ndarray, se: np.ndarray | None) -> None:
    """One row of the estimation-error table; |z| <= 2: the share within two binomial standard errors."""
    within = "-" if se is None else f"{np.mean(np.abs(errors / se) <= 2):.0%}"
    print(f"  {metric:<10} {errors.mean():+8.4f} {errors.std():8.4f} {np.abs(errors).max():8.4f} {within:>9}")


ERROR_HEADER = f"  {'metric':<10} {'mean':>8} {'std':>8} {'max |e|':>8} {'|z| <= 2':>9}"


def accuracy(args: argparse.Namespace) -> None:
    estimates = f"estimates: {{reference_labels: {args.reference_labels}}}\n"
    for name, drift_after in (("calibrated", None), ("drifted", args.windows // 4)):
        data = batches(args.windows, args.per_window, args.seed, drift_after)
        _, windows = run(TOPOLOGY + estimates, data)
        closed = baseline_windows(windows, drift_after, name, args.per_window)
        if not closed:
            continue
        print(ERROR_HEADER)
        for metric in METRICS:
            errors = np.array([w.metrics[f"estimated_{metric}"] - w.metrics[metric] for w in closed])
            se = np.array([binomial_se(w, metric) for w in closed]) if metric in RATES else None
            print_errors(metric, errors, se)


MC_TOPOLOGY = TOPOLOGY.replace("task: binary", "task: multiclass")
CLASSES = ("a", "b", "c")


def mc_batches(windows: int, per_window: int, seed: int, drift_after: int | None, classes: int = 3,
               size: int = 500) -> tuple[list[tuple[PredictionColumns, LabelColumns]], list[dict[str, Any]]]:
    """Multiclass batches and each window's rows (shares, labels, versions, timestamps)."""
    rng = np.random.default_rng(seed)
    names = CLASSES if classes == 3 else tuple(f"c{k}" for k in range(classes))
    alpha = [0.7, 1.0, 1.3] if classes == 3 else [1.0] * classes
    out, rows = [], []
    for w in range(windows):
        shares = rng.dirichlet(alpha, per_window)
        y = (rng.random(per_window)[:, None] > np.cumsum(shares, axis=1)).sum(axis=1).clip(0, classes - 1)
        if drift_after is not None and w >= drift_after:
            y = np.where(rng.random(per_window) < 0.5, rng.integers(0, classes, per_window), y)
        ts = w * 1000 + np.sort(rng.integers(0, 1000, per_window))
        version = np.where(rng.random(per_window) < 0.5, "1", "2")
        rows.append({"shares": shares, "y": y, "version": version, "ts": ts})
        for lo in range(0, per_window, size):
            part = range(lo, min(lo + size, per_window))
            preds = [Prediction(prediction_id=f"w{w}-{i}", model="m", version=str(version[i]), timestamp=int(ts[i]),
                                scores=dict(zip(names, shares[i].tolist()))) for i in part]
            labels = [Label(f"w{w}-{i}", "m", int(ts[i]) + 1, names[y[i]]) for i in part]
            out.append((PredictionColumns.from_records(preds), LabelColumns.from_records(labels)))
    return out, rows


def mc_realized(rows: dict[str, Any], version: str, labeled_before: int) -> dict[str, float]:
    """scikit-learn's metrics of a window's rows of `version` labeled before it closed."""
    keep = (rows["version"] == version) & (rows["ts"] + 1 < labeled_before)
    shares, y = rows["shares"][keep], rows["y"][keep]
    pred, labels = shares.argmax(axis=1), list(range(shares.shape[1]))
    macro = {"labels": labels, "average": "macro", "zero_division": 0}
    return {"accuracy": float(np.mean(pred == y)), "precision": precision_score(y, pred, **macro),
            "recall": recall_score(y, pred, **macro), "f1": f1_score(y, pred, **macro),
            "roc_auc": roc_auc_score(y, shares, multi_class="ovr", average="macro", labels=labels)}


def mc_accuracy(args: argparse.Namespace) -> None:
    estimates = f"estimates: {{reference_labels: {args.reference_labels}, classes: [a, b, c]}}\n"
    for name, drift_after in (("calibrated", None), ("drifted", args.windows // 4)):
        data, rows = mc_batches(args.windows, args.per_window, args.seed, drift_after)
        _, windows = run(MC_TOPOLOGY + estimates, data)
        closed = baseline_windows(windows, drift_after, f"multiclass {name}", args.per_window)
        if not closed:
            continue
        truths = [mc_realized(rows[w.window_start // 1000], "1", w.window_start + 1000) for w in closed]
        print(ERROR_HEADER)
        for metric in METRICS:
            errors = np.array([w.metrics[f"estimated_{metric}"] - t[metric] for w, t in zip(closed, truths)])
            se = None if metric != "accuracy" else np.array(
                [np.sqrt(t["accuracy"] * (1 - t["accuracy"]) / w.labeled) for w, t in zip(closed, truths)])
            print_errors(metric, errors, se)


def mc_state_size(args: argparse.Namespace) -> None:
    """Joint keys per pane of ~per_window / 2 predictions served before the calibration froze (it
    never does here), by classes and bins; once frozen a pane holds 4 K bins integers instead."""
    for classes, bins in ((3, 64), (3, 16), (10, 64), (10, 16)):
        names = CLASSES if classes == 3 else tuple(f"c{k}" for k in range(classes))
        topology = MC_TOPOLOGY + (f"estimates: {{reference_labels: 100000000, bins: {bins}, "
                                  f"classes: [{', '.join(names)}]}}\n")
        data, _ = mc_batches(4, args.per_window, args.seed, None, classes=classes)
        ev = ModelEvaluator(parse_topology(topology))
        for preds, labels in data:
            ev.add_prediction_columns(preds, NOW)
            ev.add_label_columns(labels, NOW)
            ev.advance(NOW)
        keys = [len(state.estimate.snapshot()["served"]) for key, state in ev.panes
                if key.segment is None and state.estimate is not None and state.estimate.count]
        counts = [state.estimate.count for key, state in ev.panes if key.segment is None and state.estimate is not None
                  and state.estimate.count]
        print(f"multiclass state before the calibration froze: {classes} classes, {bins} bins: {np.mean(keys):,.0f} "
              f"served keys per pane of {np.mean(counts):,.0f} predictions (frozen: {4 * classes * bins} integers)")


def cost(args: argparse.Namespace) -> None:
    if args.task in ("binary", "both"):
        binary_cost(args)
    if args.task in ("multiclass", "both"):
        per_window = 20_000
        data, _ = mc_batches(max(1, args.events // per_window), per_window, args.seed, None)
        timed(args, data, {"multiclass without estimates": MC_TOPOLOGY,
                           "multiclass with estimates": MC_TOPOLOGY + "estimates: {classes: [a, b, c]}\n"})


def binary_cost(args: argparse.Namespace) -> None:
    per_window = 20_000
    data = batches(max(1, args.events // per_window), per_window, args.seed, None)
    timed(args, data, {"without estimates": TOPOLOGY, "with estimates": TOPOLOGY + "estimates: {}\n"})


def timed(args: argparse.Namespace, data: list[tuple[PredictionColumns, LabelColumns]],
          configs: dict[str, str]) -> None:
    n = sum(len(p) for p, _ in data)
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(args.runs):  # alternated, so that a busy moment of the machine hits both alike
        for name, topology in configs.items():
            best[name] = min(best[name], run(topology, data)[0])
    for name, seconds in best.items():
        print(f"{name:<30} {seconds / n * 1e6:6.2f} µs/prediction "
              f"({n / seconds:,.0f} predictions/s, {n:,} predictions)")


def main() -> None:
    parser = argparse.ArgumentParser(usage=__doc__.rsplit("\n\n", 1)[-1].strip())
    parser.add_argument("--windows", type=int, default=200, help="windows of the accuracy streams (default 200)")
    parser.add_argument("--per-window", type=int, default=2000, help="predictions per window (default 2000)")
    parser.add_argument("--reference-labels", type=int, default=4000, help="estimates.reference_labels (4000)")
    parser.add_argument("--events", type=int, default=200_000, help="predictions of the cost run (default 200,000)")
    parser.add_argument("--runs", type=int, default=3, help="cost runs, the best is reported (default 3)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--task", choices=("binary", "multiclass", "both"), default="both",
                        help="which model's estimates to measure (default both)")
    args = parser.parse_args()
    if args.task in ("binary", "both"):
        accuracy(args)
    if args.task in ("multiclass", "both"):
        mc_accuracy(args)
        mc_state_size(args)
    cost(args)


if __name__ == "__main__":
    main()

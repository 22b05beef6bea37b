#!/usr/bin/env python
"""The label join alone: ColumnJoin (numpy columns, core/column_join.py, what the evaluator uses)
against LabelJoin (dicts of tuples, the reference model in tests/label_join_reference.py, which
the evaluator used until ColumnJoin) on the traffic of `mle-stream bench`.

Traffic as mle_stream/bench/throughput.py makes it: N predictions with 32-hex-digit ids, 2000 per second of
event time, ~90% labeled 0.5-4 s later (labels sent as their time comes, interleaved with the predictions),
the worker's topology defaults (label_max_delay 7 days, correction window = window 60 s +
retention 1 h, so every joined pair of the run stays held) and the worker's GC thresholds. Event
time is swept in batches of B predictions, each followed by the labels due by then in batches of
up to B, and the joins expire at every 60 s window boundary, as the evaluator does when a window
closes.

Timed per call (µs per prediction = total / N):
- LabelJoin: `pending` (building the (pane, version, segments, output, decision) tuple per
  prediction, as add_prediction_columns does), add_predictions, add_labels, and `as columns`:
  the cycle's Joined rows back into numpy columns as _score does (Joined.extend, zip(*rows),
  np.array per column, and the version codes _groups makes per record).
- ColumnJoin: add_predictions (ids as the list of str the decoder gives today, or with
  --ids bytes as a numpy S array, which it could give), add_labels, and `as columns`:
  ColumnJoined.concat of the cycle's parts (the columns are already numpy).
Memory: peak RSS of the child process above what it held before the first batch (Linux:
the peak is reset through /proc/self/clear_refs after the workload is built), per entry held
at the end (pending + joined: with the defaults nothing expires within a run; --max-delay-ms
and --correction-ms shorter than the run measure expiry, tombstones and reused entries), and the same from tracemalloc
(current at the end, and peak) in a separate run with tracemalloc on.

    python benchmarks/bench_join.py                     # 1M, B=500 and 50,000, 3 runs each
    python benchmarks/bench_join.py --events 200000 --runs 1 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from mle_stream.core.column_join import ColumnJoin, ColumnJoined

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from label_join_reference import Joined, LabelJoin  # noqa: E402  (the tests' reference model)

RATE_PER_S = 2_000
LABELED = 0.9
DELAY_MS = (500, 4_000)
WINDOW_MS = 60_000
MAX_DELAY_MS = 7 * 86_400_000
CORRECTION_MS = WINDOW_MS + 3_600_000
WHOLE = (None,)
PAYLOAD = {"pane": np.int64, "version": np.int8, "output": np.float64, "decision": np.bool_}


def workload(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    start = 1_700_000_000_000
    ts = start + np.arange(n, dtype=np.int64) * 1000 // RATE_PER_S
    hi, lo = rng.integers(0, 2**63, n, dtype=np.int64), rng.integers(0, 2**63, n, dtype=np.int64)
    ids = np.array([f"{a:016x}{b:016x}" for a, b in zip(hi.tolist(), lo.tolist())], dtype="S32")
    labeled = np.flatnonzero(rng.random(n) < LABELED)
    label_ts = ts[labeled] + rng.integers(DELAY_MS[0], DELAY_MS[1], len(labeled))
    order = np.argsort(label_ts, kind="stable")
    return {"ids": ids, "ts": ts, "output": rng.random(n), "version": (rng.random(n) < 0.1).astype(np.int8),
            "label_rows": labeled[order], "label_ts": label_ts[order]}


def cycles(w: dict[str, np.ndarray], batch: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """(prediction rows, [label batch positions...]) per batch of predictions."""
    n, sent = len(w["ts"]), 0
    label_ts = w["label_ts"]
    for a in range(0, n, batch):
        b = min(n, a + batch)
        due = int(np.searchsorted(label_ts, w["ts"][b - 1], side="right")) if b < n else len(label_ts)
        yield slice(a, b), [np.arange(s, min(due, s + batch)) for s in range(sent, due, batch)]
        sent = due


def run(join_kind: str, batch: int, n: int, ids_as: str, memory: bool, max_delay_ms: int = MAX_DELAY_MS,
        correction_ms: int = CORRECTION_MS) -> dict[str, Any]:
    gc.set_threshold(100_000, 50, 100)  # the worker's (stream/app.py)
    w = workload(n, seed=7)
    truth_all = (w["output"] > 0.5) ^ (np.random.default_rng(8).random(n) < 0.2)
    gc.collect()
    rss0 = _reset_peak_rss()
    if memory:
        tracemalloc.start()
    times = {"pending": 0.0, "add_predictions": 0.0, "add_labels": 0.0, "as_columns": 0.0, "expire": 0.0}
    clock = time.perf_counter
    lj: LabelJoin[Any] = LabelJoin(max_delay_ms, correction_ms)
    cj = ColumnJoin(max_delay_ms, correction_ms, PAYLOAD)
    joined_rows = 0
    next_close = int(w["ts"][0]) - int(w["ts"][0]) % WINDOW_MS + WINDOW_MS
    for rows, label_batches in cycles(w, batch):
        # What the decoder and the evaluator have at hand before the join (not timed).
        ts = w["ts"][rows]
        panes = ts - ts % WINDOW_MS
        outputs = w["output"][rows]
        decisions = outputs >= 0.5
        codes = w["version"][rows]
        sids = w["ids"][rows]
        ids: Any = sids.copy() if ids_as == "bytes" else sids.astype("U").tolist()
        if join_kind == "label_join":
            versions = ["2" if c else "1" for c in codes.tolist()]
            t0 = clock()
            pane_list = panes.tolist()
            pending = list(zip(map({p: p for p in set(pane_list)}.__getitem__, pane_list),
                               map({v: v for v in set(versions)}.__getitem__, versions), repeat(WHOLE),
                               outputs.tolist(), decisions.tolist()))
            t1 = clock()
            parts_l = [lj.add_predictions(ids, ts.tolist(), pending)]
            t2 = clock()
            times["pending"] += t1 - t0
            times["add_predictions"] += t2 - t1
        else:
            t1 = clock()
            parts_c = [cj.add_predictions(ids, ts, {"pane": panes, "version": codes, "output": outputs,
                                                    "decision": decisions})]
            times["add_predictions"] += clock() - t1
        for positions in label_batches:
            label_rows = w["label_rows"][positions]
            lts = w["label_ts"][positions]
            lsids = w["ids"][label_rows]
            lids: Any = lsids.copy() if ids_as == "bytes" else lsids.astype("U").tolist()
            truth = truth_all[label_rows]
            if join_kind == "label_join":
                truths, lts_list = truth.tolist(), lts.tolist()
                t0 = clock()
                parts_l.append(lj.add_labels(lids, lts_list, truths))
                times["add_labels"] += clock() - t0
            else:
                t0 = clock()
                parts_c.append(cj.add_labels(lids, lts, truth))
                times["add_labels"] += clock() - t0
        t0 = clock()
        if join_kind == "label_join":
            scored: Joined[Any] = Joined()
            for part in parts_l:
                scored.extend(part)
            if scored.predictions:
                pane_col, version_col, segment_col, output_col, decision_col = zip(*scored.predictions)
                columns = [np.array(pane_col, dtype=np.int64), np.array(output_col, dtype=np.float64),
                           np.array(decision_col, dtype=np.bool_), np.array(scored.labels, dtype=np.bool_),
                           np.array(scored.weights, dtype=np.float64)]
                lookup = {v: i for i, v in enumerate(dict.fromkeys(version_col))}
                columns.append(np.fromiter(map(lookup.__getitem__, version_col), dtype=np.int64,
                                           count=len(version_col)))
                segment_col.count(WHOLE)
                joined_rows += len(columns[0])
        else:
            done = ColumnJoined.concat(parts_c)
            joined_rows += len(done)
        times["as_columns"] += clock() - t0
        watermark = int(ts[-1])
        if watermark >= next_close:
            t0 = clock()
            (lj if join_kind == "label_join" else cj).expire(watermark)
            times["expire"] += clock() - t0
            next_close = watermark - watermark % WINDOW_MS + WINDOW_MS
    join: Any = lj if join_kind == "label_join" else cj
    held = join.pending[0] + join.pending[1] + join.joined
    out: dict[str, Any] = {"join": join_kind, "batch": batch, "events": n, "ids": ids_as, "joined_rows": joined_rows,
                           "held": held, "pending": join.pending,
                           "expired": [join.expired_predictions, join.expired_labels],
                           "us_per_prediction": {k: v / n * 1e6 for k, v in times.items()}}
    out["us_per_prediction"]["total"] = sum(out["us_per_prediction"].values())
    if memory:
        current, peak = tracemalloc.get_traced_memory()
        out["traced_bytes_per_held"] = current / held
        out["traced_peak_bytes_per_held"] = peak / held
    else:
        out["peak_rss_bytes_per_held"] = (_memory_kb("VmHWM") - rss0) * 1024 / held
    return out


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


def _reset_peak_rss() -> int:
    """The process's RSS now (kB), after setting its peak RSS back to it (Linux: clear_refs 5), so
    that the workload built before does not count."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _memory_kb("VmRSS")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batches", default="500,50000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-delay-ms", type=int, default=MAX_DELAY_MS)
    ap.add_argument("--correction-ms", type=int, default=CORRECTION_MS,
                    help="shorter than the run's event time (N / 2000 s) to measure expiry and reuse")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run(spec["join"], spec["batch"], spec["events"], spec["ids"], spec["memory"],
                             spec["max_delay_ms"], spec["correction_ms"])))
        return
    variants = [("label_join", "str"), ("column_join", "str"), ("column_join", "bytes")]
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for join_kind, ids_as in variants:
            spec = {"join": join_kind, "batch": batch, "events": args.events, "ids": ids_as,
                    "max_delay_ms": args.max_delay_ms, "correction_ms": args.correction_ms}
            runs = [child({**spec, "memory": False}) for _ in range(args.runs)]
            traced = child({**spec, "memory": True})
            timing = {k: statistics.median(r["us_per_prediction"][k] for r in runs)
                      for k in runs[0]["us_per_prediction"]}
            results.append({**spec, "runs": args.runs, "median_us_per_prediction": timing,
                            "all_totals": [round(r["us_per_prediction"]["total"], 3) for r in runs],
                            "median_peak_rss_bytes_per_held":
                                statistics.median(r["peak_rss_bytes_per_held"] for r in runs),
                            "traced_bytes_per_held": traced["traced_bytes_per_held"],
                            "traced_peak_bytes_per_held": traced["traced_peak_bytes_per_held"],
                            "held": runs[0]["held"], "pending": runs[0]["pending"],
                            "joined_rows": runs[0]["joined_rows"]})
            if not args.json:
                r = results[-1]
                t = r["median_us_per_prediction"]
                print(f"B={batch:>6} {join_kind:<12} ids={ids_as:<5} pending {t['pending']:.3f}  add_predictions "
                      f"{t['add_predictions']:.3f}  add_labels {t['add_labels']:.3f}  as_columns {t['as_columns']:.3f} "
                      f" expire {t['expire']:.3f}  total {t['total']:.3f} us/prediction (runs {r['all_totals']}); "
                      f"peak RSS {r['median_peak_rss_bytes_per_held']:.0f} B/held, traced "
                      f"{r['traced_bytes_per_held']:.0f} (peak {r['traced_peak_bytes_per_held']:.0f}) B/held, held "
                      f"{r['held']}", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

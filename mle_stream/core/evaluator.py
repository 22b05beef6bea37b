"""Everything mle-stream knows about one model: the label join, its panes and its policy state.

The stream (and `mle-stream replay`) feed columns of decoded records in and call `advance`; what
comes out (window results of closed windows, judgements, commands) is for the edge to publish.
Records the contract allows but this model cannot use (a binary label 'cat', a timestamp far in
the future) come back as Rejects for the dead-letter topic.

Batches are columns (core/columns.py) and the work is done per column: pane, retention and
decision are numpy expressions, the label join keeps pending predictions as numpy columns
(core/column_join.py) and hands joined rows back as columns, and each (pane, version, segment)
state is updated once per batch from numpy arrays. Python runs per record only where the data is
irregular: segments, multiclass score maps, a pod's own predicted_label, duplicates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.checks import samples_of
from mle_stream.core.column_join import ColumnJoin, ColumnJoined, label_array
from mle_stream.core.columns import FeatureColumns, IntArray, LabelColumns, PredictionColumns
from mle_stream.core.concept_feed import ConceptDriftFeed
from mle_stream.core.drift.decision import FeatureDrift
from mle_stream.core.drift.live import SCORE, Columns, DriftSketches, LiveDrift
from mle_stream.core.drift.profile import ReferenceProfile
from mle_stream.core.events import Command, DriftTable, Label, MetricSnapshot, Prediction
from mle_stream.core.id_hash import holdable_id_array
from mle_stream.core.metrics.estimated import restore_like
from mle_stream.core.policy import PolicyState, WindowJudgement, approve, decide, decide_outage, judge
from mle_stream.core.record_checks import Reject, unjoinable_ids, unusable_predictions
from mle_stream.core.retrain import RetrainState, consider_retrain, trained_at_ms
from mle_stream.core.revisions import Revisions
from mle_stream.core.segments import WHOLE, SegmentCap, segments_from_json
from mle_stream.core.shadow import Pending, ShadowPairing, compare
from mle_stream.core.shadow_mode import Pair, ShadowMode
from mle_stream.core.snapshot_columns import decode_column, encode_column
from mle_stream.core.tasks import task_for
from mle_stream.core.topology import Topology
from mle_stream.core.window_state import WindowState, new_calibration
from mle_stream.core.windows import PaneTable, Segment, WindowSpec


# What the label join keeps of a prediction: enough to score it, not its features. Columns of the
# join's arena (core/column_join.py): the pane start, the version's code (ModelEvaluator._codes),
# the output (the score for binary, the value for regression, the scores map for multiclass), the
# decision (binary: bool; multiclass: the class; regression has none) and, where the topology has
# segment dimensions, the segments (a tuple starting with None, the whole version).
def _payload_columns(topology: Topology) -> dict[str, Any]:
    task = task_for(topology.task)
    columns: dict[str, Any] = {"pane": np.int64, "version": np.int32, "output": task.output_dtype}
    if task.decision_dtype is not None:
        columns["decision"] = task.decision_dtype
    if topology.segment_dimensions:
        columns["segments"] = object
    return columns


@dataclass(frozen=True)
class InputClocks:
    """How far each input of a model has come in event time (ms; -1 before its first record):
    the largest prediction and label timestamps taken, and the event time windows close and
    predictions expire by, which waits for both (see ModelEvaluator)."""

    predictions: int
    labels: int
    event_time: int


@dataclass(frozen=True, slots=True)
class Served:
    """A batch of served predictions not yet in the pane states, as columns."""

    panes: IntArray  # pane starts
    codes: np.ndarray  # version codes (ModelEvaluator._codes)
    segments: list[tuple[Segment, ...]] | None  # None: no row has segments to count
    latency: Any
    failed: Any
    drift: dict[str, np.ndarray] | None  # drift columns (drift_columns), when drift is tracked
    keys: IntArray  # each row's key: its input's event time as it arrived
    # With estimates, each row's scores and decision as the task reads them for the estimates
    # (Task.estimate_scores, estimate_codes): binary, a score (NaN: none, or a failed prediction) and a
    # bool; multiclass, a row of class shares (a row of NaN: none) and a class code (-1: not listed).
    score: np.ndarray | None = None
    decision: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.panes)

    def rows(self, rows: IntArray) -> Served:
        """Some of the rows."""
        return Served(self.panes[rows], self.codes[rows],
                      None if self.segments is None else [self.segments[i] for i in rows.tolist()],
                      self.latency[rows], self.failed[rows],
                      None if self.drift is None else {k: v[rows] for k, v in self.drift.items()}, self.keys[rows],
                      None if self.score is None else self.score[rows],
                      None if self.decision is None else self.decision[rows])


@dataclass
class Advance:
    windows: list[MetricSnapshot] = field(default_factory=list)
    drift: list[DriftTable] = field(default_factory=list)
    judgements: list[WindowJudgement] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


def _groups(panes: IntArray, codes: np.ndarray, names: Sequence[str],
            segments: Sequence[tuple[Segment, ...]] | None) -> Iterator[tuple[tuple[int, str, Segment], IntArray]]:
    """Row indices per (pane, version, segment), versions given as codes into `names`: numpy for
    the whole-version groups, a loop over records only for segment groups."""
    n = len(panes)
    if n == 0:
        return
    if len(names) > 64:
        # Codes number every version the evaluator has seen; renumber this batch's densely so that
        # the key stays far from int64's limit however many versions a source has sent.
        present, dense = np.unique(codes, return_inverse=True)
        names, codes = [names[c] for c in present.tolist()], dense.ravel()
    key = panes * len(names) + codes  # pane starts are < 2**62 / len(names) for any real clock
    first = key[0]
    if (key == first).all():
        yield (int(panes[0]), names[int(codes[0])], None), np.arange(n, dtype=np.int64)
    else:
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for rows in np.split(order, bounds):
            r = int(rows[0])
            yield (int(panes[r]), names[int(codes[r])], None), rows
    if segments is not None:
        by_segment: defaultdict[tuple[int, str, Segment], list[int]] = defaultdict(list)
        pane_list, code_list = panes.tolist(), codes.tolist()
        for i, segs in enumerate(segments):
            for segment in segs[1:]:
                by_segment[(pane_list[i], names[code_list[i]], segment)].append(i)
        for k, rows_list in by_segment.items():
            yield k, np.array(rows_list, dtype=np.int64)


def drift_columns(features: FeatureColumns, score: np.ndarray | None, rows: IntArray, n: int) -> dict[str, np.ndarray]:
    """The given rows' feature values by name (float64 columns for the numeric layout, object
    columns where a record sent text or other names; absent values are NaN / None), plus the
    score as SCORE."""
    out: dict[str, np.ndarray] = {}
    if features.names:
        full = np.full((n, len(features.names)), np.nan)
        full[features.rows] = features.matrix
        picked = full[rows]
        for j, name in enumerate(features.names):
            out[name] = picked[:, j]
    if features.other:
        position = {i: k for k, i in enumerate(rows.tolist())}
        for i, values in features.other.items():
            k = position.get(i)
            if k is None:
                continue
            for name, value in values.items():
                column = out.get(name)
                if column is None or (column.dtype != object and not isinstance(value, (int, float))):
                    column = out[name] = (np.full(len(rows), None, dtype=object) if column is None
                                          else column.astype(object))
                column[k] = value
    if score is not None:
        out[SCORE] = score[rows]
    return out


def _column(values: Any, rows: IntArray) -> np.ndarray:
    """values[rows] as a numpy column, for a numpy column or a list (an object column then:
    element by element, so that tuples and dicts stay what they are)."""
    if isinstance(values, np.ndarray):
        return values[rows]
    return np.fromiter(map(values.__getitem__, rows.tolist()), dtype=object, count=len(rows))


class ModelEvaluator:
    def __init__(self, topology: Topology, profiles: Mapping[str, ReferenceProfile] | None = None) -> None:
        """`profiles`: reference profiles by version (see core/drift/live.py for how they are used)."""
        t = self.topology = topology
        self.task = task_for(t.task)
        self.profiles = dict(profiles or {})
        self.drift = (LiveDrift(t.drift, t.model, t.baseline_version, t.candidate_version, self.profiles)
                      if t.drift.enabled else None)
        spec = WindowSpec(t.window_size_ms, t.window_hop_ms, t.window_grace_ms, t.window_retention_ms)
        # Label-free estimates: the calibration every pane state reads (core/metrics/estimated.py).
        self.calibration = new_calibration(t)
        self.panes: PaneTable[WindowState] = PaneTable(spec, lambda: WindowState.for_topology(t, self.calibration))
        # Version names by code, as the join and the groups keep them (see _codes).
        self._version_names: list[str] = []
        self._version_codes: dict[str, int] = {}
        # A joined pair stays correctable as long as its pane can still change.
        self.join = self._new_join()
        # Shadow mode: the shadow's own join and its pairing with production (core/shadow_mode.py).
        self.shadow = (ShadowMode(self._new_join(), ShadowPairing(t.shadow_pair_within_ms))
                       if t.mode == "shadow" else None)
        self.policy_state = PolicyState()
        # When each source last sent something, on the worker's clock (not checkpointed: an outage
        # is what this process has seen; the first batch after a restart sets them).
        self._last_arrival: dict[str, int] = {}
        self.retrain_state = RetrainState()
        self.concept = ConceptDriftFeed(t.model, (t.baseline_version, t.candidate_version), t.drift.concept,
                                        error_values=not self.task.has_decisions)
        baseline_profile = self.profiles.get(t.baseline_version)
        self._trained_at = trained_at_ms(None if baseline_profile is None else baseline_profile.created_at)
        self.segments = SegmentCap(t.segment_dimensions, t.segment_max_values)
        # Windows updated since updates were last emitted: those holding a row's pane that are
        # still retained at the row's key (a row past a window's retention is no longer news of it).
        self._touched: set[int] = set()
        # Within an advance, windows updated after one of its windows closed (rows keyed past that
        # window's cut): the window closed without them, so it is reported again as REVISED.
        self._late_touched: set[int] | None = None
        # One clock per input: the largest prediction and label timestamps taken. Windows close
        # and predictions expire by the lesser of the two (event_time), so that a worker that reads
        # one topic ahead of the other (catching up on a backlog) decides as one that kept up.
        self._clock_predictions = -1
        self._clock_labels = -1
        # Set by the worker while the labels are idle (caught up and silent): event time then
        # follows the predictions alone, or a model without labels would never close a window.
        self.labels_idle = False
        # Rows not yet applied to the pane states (see _apply): served predictions as columns per
        # batch, joined rows, shadow pairs with the event time each came to be. A row with a key at
        # or past the cut of a window that holds its pane and has not closed waits for that closing.
        self._served: list[Served] = []
        self.revisions = Revisions()  # what was published of closed windows: REVISED only when it changed
        self._scored: list[ColumnJoined] = []

    def _new_join(self) -> ColumnJoin:
        t = self.topology
        return ColumnJoin(t.label_max_delay_ms, t.window_size_ms + t.window_retention_ms, _payload_columns(t))

    def _codes(self, versions: Sequence[str]) -> np.ndarray:
        """Version names as codes into _version_names; a name seen for the first time gets the next."""
        lookup = self._version_codes
        distinct = dict.fromkeys(versions)  # in C: a batch names a version or two, 500 times
        for name in distinct:
            if name not in lookup:
                lookup[name] = len(self._version_names)
                self._version_names.append(name)
        if len(distinct) == 1:
            return np.full(len(versions), lookup[next(iter(distinct))], dtype=np.int32)
        return np.fromiter(map(lookup.__getitem__, versions), dtype=np.int32, count=len(versions))

    def role(self, version: str) -> str:
        if version == self.topology.baseline_version:
            return "baseline"
        if version == self.topology.candidate_version:
            return "candidate"
        return "other"

    def clocks(self) -> InputClocks:
        return InputClocks(self._clock_predictions, self._clock_labels, self._event_time())

    def _event_time(self) -> int:
        """What windows close and predictions expire by: the lesser of the two input clocks, so
        that no window closes and no prediction expires before the labels, too, have passed it.
        The predictions' clock alone while the labels are idle or `labels.align` is off."""
        if self.labels_idle or not self.topology.label_align:
            return self._clock_predictions
        return min(self._clock_predictions, self._clock_labels)

    def _held_panes(self) -> dict[int, int]:
        """The panes of the rows held back, each with its smallest key: data as much as what the
        pane states hold, for which window is the first and which windows of a long gap have data
        (PaneTable.close_ready)."""
        panes = [s.panes for s in self._served] + [j.predictions["pane"] for j in self._scored]
        keys = [s.keys for s in self._served] + [j.at for j in self._scored]
        held = None if self.shadow is None else self.shadow.held()
        if held is not None:
            pair_panes, pair_keys = held
            panes.append(pair_panes)
            keys.append(pair_keys)
        if not panes:
            return {}
        pane_of, key_of = np.concatenate(panes), np.concatenate(keys)
        order = np.lexsort((key_of, pane_of))  # by pane, then key: each pane's first is its smallest
        first = np.flatnonzero(np.r_[True, np.diff(pane_of[order]) != 0])
        return dict(zip(pane_of[order][first].tolist(), key_of[order][first].tolist()))

    def deferred_rows(self) -> int:
        """Rows taken but held back from the pane states until a window closes (see _apply)."""
        return (sum(map(len, self._served)) + sum(len(j) for j in self._scored)
                + (0 if self.shadow is None else len(self.shadow)))

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything this evaluator holds, as plain JSON data, for a checkpoint. A million
        pending predictions are a few tens of MB; see docs/operations.md (State and restarts)."""
        self._apply()
        return {
            "kind": "model_evaluator", "v": 3, "shape": self._shape(),
            "clocks": {"predictions": self._clock_predictions, "labels": self._clock_labels},
            "deferred": self._deferred_snapshot(),
            "versions": list(self._version_names),
            "join": self.join.snapshot(),
            **({} if self.shadow is None else self.shadow.snapshot()),  # shadow_join, pairing
            "panes": self.panes.snapshot(WindowState.snapshot),
            "policy": self.policy_state.snapshot(),
            "retrain": self.retrain_state.snapshot(),
            **self.concept.snapshot(),  # monitors, alarms, abs_errors, fed_until
            "segment_values": self.segments.snapshot(),
            "touched_windows": sorted(self._touched),
            "drift": None if self.drift is None else self.drift.snapshot(),
            "revisions": self.revisions.snapshot(),
            **({} if self.calibration is None else {"calibration": self.calibration.snapshot()}),
        }

    @classmethod
    def restore(cls, topology: Topology, data: dict[str, Any],
                profiles: Mapping[str, ReferenceProfile] | None = None) -> ModelEvaluator:
        """The evaluator a snapshot was taken of, under `topology`. A topology whose windows,
        task or thresholds changed since cannot take the old state (panes would mean other
        spans, pending decisions other thresholds): ValueError names what differs."""
        if not isinstance(data, dict) or data.get("kind") != "model_evaluator" or data.get("v") not in (2, 3):
            raise ValueError(f"not a model_evaluator v2 or v3 snapshot: kind={data.get('kind')!r}, "
                             f"v={data.get('v')!r}")
        ev = cls(topology, profiles)
        differs = {k: (v, data["shape"].get(k)) for k, v in ev._shape().items() if data["shape"].get(k) != v}
        if differs:
            detail = "; ".join(f"{k}: snapshot {old!r}, topology {new!r}" for k, (new, old) in differs.items())
            raise ValueError(f"the snapshot of model {topology.model!r} was taken under another topology ({detail})")
        ev._version_names = [str(v) for v in data["versions"]]
        ev._version_codes = {v: i for i, v in enumerate(ev._version_names)}
        decoders = {"segments": segments_from_json}
        ev.join = ColumnJoin.restore(data["join"], decoders)
        if topology.mode == "shadow":
            ev.shadow = ShadowMode.restore(data, decoders)
        if ev.calibration is not None:  # absent from a snapshot taken without estimates
            ev.calibration = restore_like(ev.calibration, data.get("calibration"))
        ev.panes = PaneTable.restore(
            ev.panes.spec, lambda: WindowState.for_topology(topology, ev.calibration), data["panes"],
            lambda d: WindowState.restore(topology, d, ev.calibration))
        ev.policy_state = PolicyState.restore(data["policy"])
        ev.retrain_state = RetrainState.restore(data.get("retrain") or {})
        ev.concept.restore(data)
        ev.segments.restore(data["segment_values"])
        if "touched_windows" in data:
            ev._touched = set(data["touched_windows"])
        else:  # older snapshots kept the panes
            ev._touched = {w for pane in data["touched"] for w in ev.panes.windows_holding(pane)}
        ev.revisions = Revisions.restore(data.get("revisions"))  # absent from older snapshots
        if ev.drift is not None and data.get("drift"):
            ev.drift.restore_state(data["drift"])
        if data["v"] == 2:
            # Taken before inputs had clocks: event time was the predictions' alone.
            ev._clock_predictions = ev._clock_labels = ev.panes.watermark
        else:
            ev._clock_predictions = int(data["clocks"]["predictions"])
            ev._clock_labels = int(data["clocks"]["labels"])
            ev._restore_deferred(data["deferred"])
        return ev

    def _deferred_snapshot(self) -> dict[str, Any]:
        """The rows _apply holds back, as JSON data (see snapshot)."""
        def column(values: np.ndarray) -> dict[str, Any]:
            return encode_column(values.tolist())

        # Multiclass shares and decided classes are by position in the topology's class list.
        listed = self.topology.estimates.classes
        classes = {"classes": list(listed)} if listed else {}
        served = [{"panes": column(s.panes), "codes": column(s.codes),
                   "segments": None if s.segments is None else encode_column(s.segments),
                   "latency": column(np.asarray(s.latency, dtype=np.float64)), "failed": column(np.asarray(s.failed)),
                   "drift": None if s.drift is None else {k: column(v) for k, v in s.drift.items()},
                   "keys": column(s.keys),
                   **({} if s.score is None or s.decision is None else  # multiclass shares: flattened
                      {"score": column(s.score.ravel()), "decision": column(s.decision), **classes})}
                  for s in self._served]
        scored = [{"predictions": {k: column(v) for k, v in j.predictions.items()}, "labels": column(j.labels),
                   "weights": column(j.weights), "at": column(j.at)} for j in self._scored]
        pairs = None if self.shadow is None else self.shadow.deferred_snapshot()
        return {"served": served, "scored": scored, "pairs": pairs}

    def _restore_deferred(self, data: dict[str, Any]) -> None:
        payload = _payload_columns(self.topology)
        classes = self.topology.estimates.classes

        def array(encoded: dict[str, Any], dtype: Any) -> np.ndarray:
            values = decode_column(encoded)
            if dtype == object:
                return np.fromiter(values, dtype=object, count=len(values))
            return np.array(values, dtype=dtype)

        for part in data["served"]:
            segments = None if part["segments"] is None else segments_from_json(decode_column(part["segments"]))
            drift = None
            if part["drift"] is not None:
                drift = {}
                for k, encoded in part["drift"].items():
                    values = decode_column(encoded)
                    numeric = all(isinstance(v, float) for v in values)
                    drift[k] = np.array(values, dtype=np.float64 if numeric else object)
            keys = array(part["keys"], np.int64)
            score, decision = None, None
            if self.calibration is not None:
                # Rows with no scores to count, as the estimates read a failed prediction's.
                none = np.full(len(keys), None, dtype=object)
                score, decision = self.task.estimate_scores(none, classes), self.task.estimate_codes(none, classes)
                # Taken without estimates or under other classes, the rows keep those.
                if "score" in part and part.get("classes", []) == list(classes):
                    score = array(part["score"], np.float64).reshape(score.shape)
                    decision = array(part["decision"], decision.dtype)
            self._served.append(Served(array(part["panes"], np.int64), array(part["codes"], np.int32), segments,
                                       array(part["latency"], np.float64), array(part["failed"], np.bool_), drift,
                                       keys, score, decision))
        for part in data["scored"]:
            predictions = {}
            for k, dtype in payload.items():
                if k == "segments":
                    values = segments_from_json(decode_column(part["predictions"][k]))
                    predictions[k] = np.fromiter(values, dtype=object, count=len(values))
                else:
                    predictions[k] = array(part["predictions"][k], dtype)
            at = array(part["at"], np.int64)
            self._scored.append(ColumnJoined(np.zeros(len(at), dtype=np.int64), predictions,
                                             label_array(decode_column(part["labels"])),
                                             array(part["weights"], np.float64), np.zeros(0, dtype=np.int64), at))
        if self.shadow is not None:
            self.shadow.restore_deferred(data["pairs"])

    def _shape(self) -> dict[str, Any]:
        """What a snapshot's meaning depends on."""
        t = self.topology
        return {"model": t.model, "task": t.task, "threshold": t.threshold, "thresholds": list(t.thresholds),
                "window_size_ms": t.window_size_ms, "window_hop_ms": t.window_hop_ms,
                "segment_dimensions": list(t.segment_dimensions), "drift": t.drift.enabled,
                "concept": [s.to_json() for s in t.drift.concept],
                **({"mode": "shadow"} if t.mode == "shadow" else {})}  # only then: older snapshots stay valid

    # -- input ------------------------------------------------------------------------------------

    def add_predictions(self, predictions: list[Prediction], now_ms: int) -> list[Reject]:
        """Records instead of columns (replay, tests); Reject.index is the position in the list."""
        return self.add_prediction_columns(PredictionColumns.from_records(predictions), now_ms)

    def add_labels(self, labels: list[Label], now_ms: int | None = None) -> list[Reject]:
        return self.add_label_columns(LabelColumns.from_records(labels), now_ms)

    def add_prediction_columns(self, cols: PredictionColumns, now_ms: int) -> list[Reject]:
        """One batch of one model's predictions, in arrival order. The result is as if they were
        added one by one: the predictions' clock moves with every accepted record, and a record
        whose pane that clock has already retired is dropped (counted in late_dropped)."""
        t = self.topology
        n = len(cols)
        if n == 0:
            return []
        self._last_arrival["predictions"] = now_ms
        rejects: list[Reject] = []
        ok = np.ones(n, dtype=bool)
        ts = cols.timestamp
        horizon = now_ms + t.max_clock_skew_ms
        for i in np.flatnonzero(ts > horizon).tolist():
            # One far-future timestamp would close every open window at once: refuse it.
            rejects.append(Reject(i, "timestamp", f"{int(ts[i])} is {int(ts[i]) - now_ms} ms ahead of the "
                                  f"worker's clock (allowed: {t.max_clock_skew_ms} ms)"))
            ok[i] = False
        sids = self._holdable_id_array(cols.prediction_id)
        for reject in unusable_predictions(cols.prediction_id, cols.latency_ms, ids_held=sids is not None):
            if ok[reject.index]:
                rejects.append(reject)
                ok[reject.index] = False
        failed = np.zeros(n, dtype=bool) if cols.error is None else np.array([e is not None for e in cols.error])
        outputs, decisions = self.task.read_outputs(cols, t.threshold, failed, ok, rejects)
        if rejects:
            rejects.sort(key=lambda r: r.index)
        rows = np.flatnonzero(ok)
        if len(rows) == 0:
            return rejects
        # Each record's key: the predictions' clock as it was when the record arrived (the running
        # maximum, this record included). Whatever depends on when a record came (retention, the
        # pair's expiry, which closed windows it misses) depends on its key, not on how far the
        # labels had come, so the result is the same however the two topics are interleaved.
        ts_ok = ts[rows]
        running = np.maximum(np.maximum.accumulate(ts_ok), self._clock_predictions)
        self._clock_predictions = int(running[-1])
        self.panes.observe(self._event_time())
        panes = ts_ok - ts_ok % self.panes.spec.hop_ms
        retained = self.panes.retained(panes, running)
        if not retained.all():
            self.panes.late_dropped += int((~retained).sum())
            rows, ts_ok, panes, running = rows[retained], ts_ok[retained], panes[retained], running[retained]
        if len(rows) == 0:
            return rejects
        all_rows = len(rows) == n
        codes = self._codes(cols.version)
        if not all_rows:
            codes = codes[rows]
        segments = self.segments.of(cols.segment, rows)

        failed_rows = failed if all_rows else failed[rows]
        # Joined: predictions that did not fail wait for (or meet) their labels.
        waiting = np.flatnonzero(~failed_rows)
        joining = rows[waiting]
        ids: Sequence[str] | np.ndarray
        if sids is not None:
            ids = sids if len(joining) == n else sids[joining]
        else:
            ids = cols.prediction_id if len(joining) == n else [cols.prediction_id[i] for i in joining.tolist()]
        payload = {"pane": panes[waiting], "version": codes[waiting], "output": _column(outputs, joining)}
        if self.task.has_decisions:
            payload["decision"] = _column(decisions, joining)
        if t.segment_dimensions:
            payload["segments"] = (np.fromiter(repeat(WHOLE, len(waiting)), dtype=object, count=len(waiting))
                                   if segments is None else _column(segments, waiting))
        joined = self._join_predictions(ids, running[waiting], payload)

        # Served: every prediction, failed ones included, a duplicate delivery not again.
        latency = cols.latency_ms if all_rows else cols.latency_ms[rows]
        served_rows = rows
        if len(joined.duplicates):
            served = np.ones(len(rows), dtype=bool)
            served[waiting[joined.duplicates]] = False
            keep = np.flatnonzero(served)
            panes, codes, latency, failed_rows = panes[keep], codes[keep], latency[keep], failed_rows[keep]
            running = running[keep]
            segments = None if segments is None else [segments[i] for i in keep.tolist()]
            served_rows = rows[keep]
        drift = None
        if self.drift is not None:
            drift = drift_columns(cols.features, self.task.drift_score(cols), served_rows, n)
        score = decision = None
        if self.calibration is not None:
            classes = t.estimates.classes
            score = self.task.estimate_scores(_column(outputs, served_rows), classes)
            score[failed_rows] = np.nan  # a failed prediction has no score to count, whatever it sent
            decision = self.task.estimate_codes(_column(decisions, served_rows), classes)
        self._served.append(Served(panes, codes, segments, latency, failed_rows, drift, running, score, decision))
        if len(joined):
            self._scored.append(joined)
        return rejects

    def add_label_columns(self, cols: LabelColumns, now_ms: int | None = None) -> list[Reject]:
        """One batch of one model's labels, in arrival order (at `now_ms` on the worker's clock)."""
        n = len(cols)
        if n == 0:
            return []
        if now_ms is not None:
            self._last_arrival["labels"] = now_ms
        rejects: list[Reject] = []
        truths = self.task.read_truths(cols.label, rejects)
        ids, ts = cols.prediction_id, cols.timestamp
        if now_ms is not None:
            horizon = now_ms + self.topology.max_clock_skew_ms
            refused = {r.index for r in rejects}
            for i in np.flatnonzero(ts > horizon).tolist():
                # One far-future label would move the labels' clock past every later label.
                if i not in refused:
                    rejects.append(Reject(i, "timestamp", f"{int(ts[i])} is {int(ts[i]) - now_ms} ms ahead of the "
                                          f"worker's clock (allowed: {self.topology.max_clock_skew_ms} ms)"))
            rejects.sort(key=lambda r: r.index)
        sids = self._holdable_id_array(ids)
        if sids is None:
            rejected = {r.index for r in rejects}
            unjoinable = [r for r in unjoinable_ids(ids) if r.index not in rejected]
            if unjoinable:
                rejects = sorted(rejects + unjoinable, key=lambda r: r.index)
        if rejects:
            bad = {r.index for r in rejects}
            keep = [i for i in range(n) if i not in bad]
            ts, truths = ts[keep], [truths[i] for i in keep]
            if sids is None:
                ids = [ids[i] for i in keep]
            else:
                sids = sids[keep]
        if len(ts) == 0:
            return rejects
        # Keys, as for predictions: the labels' clock as each label arrived.
        keys = np.maximum(np.maximum.accumulate(ts), self._clock_labels)
        self._clock_labels = int(keys[-1])
        self.panes.observe(self._event_time())
        parts = [self.join.add_labels(ids if sids is None else sids, keys, truths)]
        if self.shadow is not None:
            shadow_part = self.shadow.add_labels(ids, keys, truths)
            if shadow_part is not None:
                parts.append(shadow_part)
        self._scored.extend(self._retained(part) for part in parts if len(part))
        return rejects

    def _holdable_id_array(self, ids: Sequence[str]) -> np.ndarray | None:
        """The ids as the join keeps them, if all can be held and a shortcut shows it (ids of one
        format); None: check them one by one (record_checks.unjoinable_ids) and hand the join str. In shadow
        mode always None: the shadow's pairing keeps ids as str."""
        return holdable_id_array(ids) if self.shadow is None else None

    def _join_predictions(self, ids: Sequence[str] | np.ndarray, ts: IntArray,
                          payload: dict[str, np.ndarray]) -> ColumnJoined:
        """Predictions into the label join; in shadow mode the shadow's into its own join, with the
        label production's join already holds for the id, and both sides into the pairing."""
        if self.shadow is None:
            return self.join.add_predictions(ids, ts, payload)
        shadow = payload["version"] == self._version_codes.get(self.topology.candidate_version, -1)
        return self.shadow.add_predictions(self.join, ids, ts, payload, shadow, self._version_names)

    def _retained(self, joined: ColumnJoined) -> ColumnJoined:
        """The rows whose panes are still retained at the time each pair came to be (its key,
        not event time when the batch is applied: that may have moved far on by then)."""
        keep = self.panes.retained(joined.predictions["pane"], joined.at)
        if keep.all():
            return joined
        self.panes.late_dropped += int((~keep).sum())
        return joined.select(keep)

    def _ready(self, panes: IntArray, keys: IntArray, next_window: int | None) -> npt.NDArray[np.bool_]:
        """Which rows may go into the pane states now, with the windows before `next_window`
        closed: a row whose key is at or past the cut (end + grace) of a window that holds its
        pane and is still open belongs after that window's closing (a REVISED update of it). So a
        closed window holds exactly the rows keyed before its cut, whichever input came first."""
        spec = self.panes.spec
        first_open = panes - (spec.size_ms - spec.hop_ms)
        if next_window is not None:
            first_open = np.maximum(first_open, next_window)
        return (first_open > panes) | (keys < first_open + (spec.size_ms + spec.grace_ms))  # type: ignore[no-any-return]

    def _apply(self, closing: int | None = None) -> None:
        """Update the pane states with the rows gathered since the last call that may go in now
        (_ready; the others wait). Deferred to here (advance, snapshot) because a state update
        has a fixed cost far above its per-row cost: once per worker batch, not once per Kafka
        message. `closing`: the window about to close (advance), the windows before it closed;
        by default, the windows that are closed."""
        next_window = self.panes.next_window if closing is None else closing
        ready_served: list[Served] = []
        waiting_served: list[Served] = []
        for part in self._served:
            ok = self._ready(part.panes, part.keys, next_window)
            if ok.all():
                ready_served.append(part)
            elif ok.any():
                ready_served.append(part.rows(np.flatnonzero(ok)))
                waiting_served.append(part.rows(np.flatnonzero(~ok)))
            else:
                waiting_served.append(part)
        ready_scored: list[ColumnJoined] = []
        waiting_scored: list[ColumnJoined] = []
        for joined in self._scored:
            ok = self._ready(joined.predictions["pane"], joined.at, next_window)
            if ok.all():
                ready_scored.append(joined)
            elif ok.any():
                ready_scored.append(joined.select(ok))
                waiting_scored.append(joined.select(~ok))
            else:
                waiting_scored.append(joined)
        ready_pairs: list[Pair] = []
        ready_keys: list[int] = []
        if self.shadow is not None:
            ready_pairs, ready_keys = self.shadow.take_ready(lambda panes, keys: self._ready(panes, keys, next_window))
        self._served, self._scored = waiting_served, waiting_scored
        if ready_served:
            served = ready_served
            panes = np.concatenate([s.panes for s in served])
            codes = np.concatenate([s.codes for s in served])
            if all(s.segments is None for s in served):
                segments = None
            else:
                segments = [seg for s in served for seg in (s.segments or repeat(WHOLE, len(s)))]
            latency = np.concatenate([s.latency for s in served])
            failed = np.concatenate([s.failed for s in served])
            drift = _concat_columns([(s.drift, len(s)) for s in served]) if self.drift is not None else None
            keys = np.concatenate([s.keys for s in served])
            score = decision = None
            if self.calibration is not None:
                score = np.concatenate([s.score for s in served if s.score is not None])
                decision = np.concatenate([s.decision for s in served if s.decision is not None])
            for (pane, version, segment), idx in _groups(panes, codes, self._version_names, segments):
                state = self.panes.state(pane, version, segment, checked=True)
                if state is not None:
                    key = int(keys[idx].min())
                    self._touch(pane, key)
                    if score is None or decision is None:
                        state.serve(latency[idx], failed[idx])
                    else:
                        state.serve(latency[idx], failed[idx], score[idx], decision[idx])
                    if drift is not None and segment is None:
                        self._sketch(pane, version, {k: c[idx] for k, c in drift.items()}, len(idx), key)
        if ready_scored:
            self._score(ColumnJoined.concat(ready_scored))
        if ready_pairs:
            self._compare(ready_pairs, ready_keys)

    def _touch(self, pane: int, key: int) -> None:
        """Rows keyed from `key` on updated the pane: the windows holding it that are still
        retained at that key have news (decided by the rows, not by how far event time has come)."""
        spec = self.panes.spec
        windows = [w for w in self.panes.windows_holding(pane) if w + spec.size_ms + spec.retention_ms > key]
        self._touched.update(windows)
        if self._late_touched is not None:
            self._late_touched.update(windows)

    def _compare(self, pairs: list[Pair], keys: list[int]) -> None:
        """Shadow mode: (shadow, production) pairs into the shadow's pane states (core/shadow.py)."""
        agree, decided, diff, abs_diff = compare(self.task, pairs)
        shadow = [s for s, _ in pairs]
        panes = np.fromiter((pane for pane, *_ in shadow), dtype=np.int64, count=len(shadow))
        segments = [segs for _, _, segs, *_ in shadow]
        if segments.count(WHOLE) == len(segments):
            segments = None  # type: ignore[assignment]
        codes = self._codes([version for _, version, *_ in shadow])
        for (pane, version, segment), idx in _groups(panes, codes, self._version_names, segments):
            state = self.panes.state(pane, version, segment, checked=True)
            if state is not None and state.shadow is not None:
                self._touch(pane, min(keys[i] for i in idx.tolist()))
                state.shadow.update(agree[idx], decided[idx], diff[idx], abs_diff[idx])

    def _sketch(self, pane: int, version: str, columns: Columns, n: int, key: int) -> None:
        """Rows of one (pane, version) into its drift sketches, or into the warm-up buffer."""
        assert self.drift is not None
        if not self.drift.tracked(version):
            return
        for p, v, cols, m in self.drift.take(pane, version, columns, n):
            if p != pane and not self.panes.is_retained(p):
                continue  # warm-up rows of a pane retention has let go
            state = self.panes.state(p, v, None, checked=True)
            bins = self.drift.bins(v)
            if state is None or bins is None:
                continue
            if state.drift is None:
                state.drift = DriftSketches.like(bins)
            state.drift.update(cols, m)
            self._touch(p, key)

    def _score(self, joined: ColumnJoined) -> None:
        """Add joined (prediction, label) rows to their panes' states; weight -1 takes one out."""
        task = self.task
        p = joined.predictions
        panes, codes, output = p["pane"], p["version"], p["output"]
        segments = None
        if "segments" in p:
            segment_list = p["segments"].tolist()
            if segment_list.count(WHOLE) < len(segment_list):  # count: in C
                segments = segment_list
        w = joined.weights
        y, score = task.truths_and_scores(joined.labels, output)
        decisions = p.get("decision")
        estimates = None  # the rows as the estimates take them: scores, decisions, labels
        if self.calibration is not None and decisions is not None:
            classes = self.topology.estimates.classes
            estimates = (task.estimate_scores(output, classes), task.estimate_codes(decisions, classes),
                         task.estimate_codes(y, classes))
        for (pane, version, segment), idx in _groups(panes, codes, self._version_names, segments):
            state = self.panes.state(pane, version, segment, checked=True)
            if state is None:
                continue
            self._touch(pane, int(joined.at[idx].min()))
            yi, si, wi = y[idx], score[idx], w[idx]
            rows = None if estimates is None else (estimates[0][idx], estimates[1][idx], estimates[2][idx], wi)
            state.score(task.outcomes(yi, si, None if decisions is None else decisions[idx], wi), rows)
            if segment is None:
                self.concept.add_outcomes(pane, version, yi, si, wi)

    # -- output -----------------------------------------------------------------------------------

    def close_all(self, now_ms: int) -> Advance:
        """Close every window that holds data, as if event time had moved far past them (the end
        of a replay)."""
        t = self.topology
        self.labels_idle = True  # the input has ended: nothing more to wait for
        self.panes.observe(self._event_time())
        if self.panes.watermark >= 0:
            self.panes.observe(self.panes.watermark + t.window_size_ms + t.window_grace_ms)
        self._clock_predictions = max(self._clock_predictions, self.panes.watermark)
        return self.advance(now_ms, updates=True)

    def closing_due(self) -> bool:
        """Whether `advance` would close a window now. Between closings, `advance` only reports
        snapshots of windows still filling (with `updates`): the replay, which keeps only the last
        snapshot of each window, advances at closings and at the end only."""
        self.panes.observe(self._event_time())
        if self.panes.next_window is None:
            self._apply()  # the first window is the one holding the first pane with data
        return self.panes.closing_due(self._held_panes())

    def advance(self, now_ms: int, updates: bool = False) -> Advance:
        """Close the windows the watermark has passed (results with status CLOSED, judgement,
        decision). With `updates`, also report every other window whose panes changed since the
        last updates: OPEN ones still filling, REVISED ones that late labels changed after they
        closed (their verdict stands: a decision is taken once). Then forget what retention no
        longer needs."""
        self.panes.observe(self._event_time())  # labels may have gone idle since the last input
        self._apply()
        out = Advance()
        t = self.topology
        closing = self.panes.close_ready(self._held_panes())
        for start in closing:
            self._apply(closing=start)  # the rows keyed before its cut
            baseline = self.panes.window(start, t.baseline_version)
            candidate = self.panes.window(start, t.candidate_version)
            judgement = judge(t, start, baseline, candidate, self.policy_state)
            self.policy_state, commands = decide(t, self.policy_state, judgement, now_ms)
            out.judgements.append(judgement)
            out.commands.extend(commands)
            known: dict[tuple[str, Segment], WindowState] = {
                (t.baseline_version, None): baseline, (t.candidate_version, None): candidate}
            self._detect(start)
            self._results(out, start, "CLOSED", judgement.verdict.value, known, now_ms)
            if self._late_touched is None:
                self._late_touched = set()
            if t.retrain.new_labels is not None:
                # The baseline's labels of the pane this window is the first to close: counted
                # once, as the closed window holds them (labels that come later are not counted).
                pane = start + t.window_size_ms - t.window_hop_ms
                state = self.panes.peek(pane, t.baseline_version)
                if pane >= self._trained_at and state is not None:
                    self.retrain_state = replace(self.retrain_state, labels_since_training=(
                        self.retrain_state.labels_since_training + state.labeled))
            if t.retrain.enabled:
                baseline_drift = next((d for d in reversed(out.drift)
                                       if d.window_start == start and d.version == t.baseline_version), None)
                self.retrain_state, retrain = consider_retrain(
                    t, self.retrain_state, window_start=start, window_end=start + t.window_size_ms,
                    baseline_drift=baseline_drift, alarms=self.concept.alarms(t.baseline_version, start),
                    trained_at=self._trained_at, now_ms=now_ms)
                out.commands.extend(retrain)
        if closing:
            self._apply()
        late, self._late_touched = self._late_touched or set(), None
        out.commands.extend(self.check_outage(now_ms))
        # Windows leaving retention now are reported whatever `updates` says, while all their panes
        # are still there: a late row's news of them must not depend on when updates were asked for.
        leaving = set() if updates else {w for w in self._touched if not self.panes.is_retained(w)}
        if updates or leaving:
            changed = (self._touched if updates else leaving) - set(closing)
            changed |= late & set(closing)
            next_window = self.panes.next_window
            for start in sorted(changed):
                # Before the next window to close: closed, skipped in a long gap, or before the
                # first window (only rows read past its cut reach those): no more OPEN, and news of
                # late rows whichever it is.
                status = "REVISED" if next_window is not None and start < next_window else "OPEN"
                self._results(out, start, status, None, {}, now_ms)
        if updates:
            self._touched.clear()
        else:
            self._touched -= set(closing) - late  # their CLOSED results hold them
            if leaving:
                self._touched -= changed
        if closing:
            self._calibrate()
            # Both scan only what has expired; run them once per closing, not per batch.
            self.panes.retire()
            # A window's results can change while its last pane is retained (PaneTable.is_retained).
            self.revisions.forget_before(self.panes.watermark - t.window_retention_ms - 2 * t.window_size_ms
                                         + t.window_hop_ms + 1)
            self.join.expire(self.panes.watermark)
            if self.shadow is not None:
                self.shadow.expire(self.panes.watermark)
            self.concept.forget(self.panes.is_retained)
        return out

    def _calibrate(self) -> None:
        """Until the calibration is frozen, add the baseline's whole-version panes that are leaving
        retention: their labels are as complete as they will get (never the candidate's: its
        estimates are judged by the baseline's calibration)."""
        calibration = self.calibration
        if calibration is None or calibration.frozen:
            return
        baseline = self.topology.baseline_version
        leaving = [(key.start, state.estimate) for key, state in self.panes
                   if key.version == baseline and key.segment is None and state.estimate is not None
                   and not self.panes.is_retained(key.start)]
        for _, estimate in sorted(leaving, key=lambda item: item[0]):
            calibration.add(estimate)

    def _detect(self, start: int) -> None:
        """Feed the concept-drift detectors the pane that the closing window is the first to hold
        (its last pane; core/concept_feed.py)."""
        t = self.topology
        pane = start + t.window_size_ms - t.window_hop_ms

        def labeled_errors(version: str) -> tuple[int, int]:
            state = self.panes.peek(pane, version)
            n = 0 if state is None else state.labeled
            return n, 0 if state is None else round((state.error_rate or 0.0) * n)

        self.concept.feed(start, pane, labeled_errors)

    def held_back(self, source: str, now_ms: int) -> None:
        """The worker holds `source` back (a paused partition) at `now_ms`: it is not silent, so
        its outage clock starts afresh (an outage HOLD is about a source that stopped sending)."""
        if source in self._last_arrival:
            self._last_arrival[source] = now_ms

    def check_outage(self, now_ms: int) -> list[Command]:
        """HOLD when a source has been silent longer than decision.outage_after (labels only matter
        when a check reads labeled predictions). The worker also calls this on a timer: without
        input nothing else runs."""
        t = self.topology
        commands: list[Command] = []
        for source, last in [(s, self._last_arrival[s]) for s in ("predictions", "labels") if s in self._last_arrival]:
            if source == "labels" and all(samples_of(r.metric) != "labeled" for r in t.checks):
                continue
            if now_ms - last > t.decision.outage_after_ms:
                self.policy_state, held = decide_outage(t, self.policy_state, source, last, now_ms)
                commands += held
        return commands

    def approve(self, approval: Command, now_ms: int) -> tuple[list[Command], str]:
        """An operator's verified APPROVE: the waiting step's command, if it is the one approved
        (core/policy.approve), and what happened, for the log."""
        self.policy_state, commands, note = approve(self.topology, self.policy_state, approval, now_ms)
        return commands, note

    def _results(self, out: Advance, start: int, status: str, verdict: str | None,
                 known: Mapping[tuple[str, Segment], WindowState], now_ms: int) -> None:
        """The window's MetricSnapshots (per version and segment) and drift tables into `out`."""
        t = self.topology
        keys = self.panes.keys_in(start) | set(known)
        whole: dict[str, WindowState] = {}
        for version, segment in sorted(keys, key=lambda k: (k[0], k[1] or ("", ""))):
            state = known.get((version, segment)) or self.panes.window(start, version, segment)
            role = self.role(version)
            if segment is None:
                whole[version] = state
            snapshot = MetricSnapshot(
                model=t.model, version=version, role=role,
                segment=None if segment is None else f"{segment[0]}={segment[1]}",
                window_start=start, window_end=start + t.window_size_ms,
                predictions=state.predictions, labeled=state.labeled,
                metrics=state.values(t.window_size_ms / 1000),
                verdict=verdict if role == "candidate" and segment is None else None, status=status,
                emitted_at=now_ms,
            )
            if self.revisions.publish(snapshot):  # a REVISED one only when its numbers changed
                out.windows.append(snapshot)
        if self.drift is None:
            return
        baseline = whole.get(t.baseline_version)
        for version in (t.baseline_version, t.candidate_version):
            current = whole.get(version)
            table = None if current is None else self.drift.table(
                version, current.drift, None if baseline is None else baseline.drift)
            if table is None and (current is None or not self.concept.tracks(version)):
                continue  # nothing to compare with, and no detector to report
            drift = DriftTable(
                model=t.model, version=version, role=self.role(version), window_start=start,
                window_end=start + t.window_size_ms, status=status,
                reference="none" if table is None else table.reference,
                features={} if table is None else {name: _stats(f) for name, f in table.features.items()},
                drifted=() if table is None else tuple(table.drifted),
                drifted_share=None if table is None else table.drifted_share,
                concept_drift=tuple(self.concept.alarms(version, start)), emitted_at=now_ms)
            if self.revisions.publish(drift):
                out.drift.append(drift)


def _stats(f: FeatureDrift) -> dict[str, object]:
    """A feature's drift statistics as the DriftTable event carries them (without its name)."""
    return {k: getattr(f, k) for k in f.__dataclass_fields__ if k != "feature"}


def _concat_columns(parts: list[tuple[dict[str, np.ndarray] | None, int]]) -> dict[str, np.ndarray]:
    """Columns of consecutive batches as one; a column a batch lacks is missing (NaN / None) there."""
    names = list(dict.fromkeys(k for cols, _ in parts for k in (cols or {})))
    out: dict[str, np.ndarray] = {}
    for name in names:
        pieces = []
        for cols, n in parts:
            column = None if cols is None else cols.get(name)
            pieces.append(np.full(n, np.nan) if column is None else column)
        text = any(p.dtype == object for p in pieces)
        out[name] = np.concatenate([p.astype(object) if text else p for p in pieces])
    return out


__all__ = ["Advance", "ModelEvaluator", "Pending", "Reject"]

"""Online concept-drift detectors on a model version's stream of labeled outcomes (its errors).

River's ADWIN, PageHinkley and KSWIN (chosen and tuned per topology) and our own
CUSUM run on each version's stream of errors (classification: 0/1 misclassification; regression:
absolute errors). An alarm becomes a `ConceptAlarm`: the detector, its full effective parameters
and the position (0-based index, from the monitor's start, of the outcome that raised it).

What each detector does after an alarm (river 0.26.1, read from its source and checked by the
tests): ADWIN, PageHinkley and KSWIN all keep `drift_detected` set until their next `update`, which
first calls `_reset()`: a complete restart (ADWIN: a new Rust `AdaptiveWindowing`, its window and
clock counter empty; PageHinkley: mean, cumulative sums and extremes back to their initial values;
KSWIN: window emptied, `n` = 0 and its random generator re-seeded with `seed`). So after an alarm
every river detector learns the new level as normal and judges later outcomes against it; the
next alarm means a further change. Our CUSUM does the same: its statistic restarts at 0, and what
it estimated (mu0, sigma) is estimated again from the next `warmup` outcomes.

Checkpoints are JSON (no pickle). PageHinkley, KSWIN (including its random generator's state) and
the CUSUM are Python objects whose attributes are stored. river's ADWIN lives in Rust, its state
can be neither read nor pickled, so the monitor keeps ADWIN's inputs since its last restart (its
"epoch") and replays them into a fresh detector on restore. An epoch starts at the monitor's
start, after each ADWIN alarm (the restart above makes the state independent of anything
earlier), and when the epoch reaches `max_history` outcomes: a forced restart, so the history to
keep is bounded. The forced restart depends only on the stream (epoch lengths), so a restored
monitor does it exactly where the uninterrupted one does, and both raise the same alarms.

`pane_sequence` / `pane_values_sequence`: the caller feeds detectors pane by pane in event-time
order; the order of outcomes inside a pane depends on arrival and would not be the same after a
restart, so a pane's errors are fed in a canonical, seeded order instead.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

KINDS = ("adwin", "page_hinkley", "kswin", "cusum")
SNAPSHOT_VERSION = 1


def _river_drift() -> Any:
    """river.drift, imported on first use: importing it pulls in scikit-learn through river.datasets,
    a cost every importer of mle_stream.core.drift would otherwise pay."""
    from river import drift

    return drift


def _river_version() -> str:
    import river

    return str(river.__version__)


# -- parameters ---------------------------------------------------------------------------------

def _float(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False,
           optional: bool = False) -> Callable[[str, str, Any], Any]:
    """A check for a finite float parameter within [lo, hi] (ends open where asked)."""
    def check(kind: str, name: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi is None else "]"
        what = f"a finite number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        if optional:
            what += " or null"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"concept drift detector {kind!r}: parameter {name!r} must be {what}, got {value!r}")
        v = float(value)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            raise ValueError(f"concept drift detector {kind!r}: parameter {name!r} must be {what}, got {value!r}")
        return v
    return check


def _int(lo: int) -> Callable[[str, str, Any], Any]:
    def check(kind: str, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"concept drift detector {kind!r}: parameter {name!r} must be an integer >= {lo}, "
                             f"got {value!r}")
        return int(value)
    return check


def _choice(*allowed: str) -> Callable[[str, str, Any], Any]:
    def check(kind: str, name: str, value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"concept drift detector {kind!r}: parameter {name!r} must be one of "
                             f"{', '.join(map(repr, allowed))}, got {value!r}")
        return str(value)
    return check


# Per kind: parameter -> (default, check). Names and defaults are river 0.26's, except ADWIN's
# `max_history` (ours, see the module docstring), KSWIN's seed (river's default None would make
# runs irreproducible) and the CUSUM's (ours, see CUSUM).
_PARAMS: dict[str, dict[str, tuple[Any, Callable[[str, str, Any], Any]]]] = {
    "adwin": {
        "delta": (0.002, _float(0.0, 1.0, lo_open=True, hi_open=True)),
        "clock": (32, _int(1)),
        "max_buckets": (5, _int(1)),
        "min_window_length": (5, _int(1)),
        "grace_period": (10, _int(1)),
        "max_history": (1_000_000, _int(1)),
    },
    "page_hinkley": {
        "min_instances": (30, _int(1)),
        "delta": (0.005, _float(0.0, None)),
        "threshold": (50.0, _float(0.0, None, lo_open=True)),
        "alpha": (1 - 0.0001, _float(0.0, 1.0, lo_open=True)),
        "mode": ("both", _choice("up", "down", "both")),
    },
    "kswin": {
        "alpha": (0.005, _float(0.0, 1.0, lo_open=True, hi_open=True)),
        "window_size": (100, _int(2)),
        "stat_size": (30, _int(1)),
        "seed": (42, _int(0)),
    },
    "cusum": {
        "k": (0.25, _float(0.0, None)),
        "h": (50.0, _float(0.0, None, lo_open=True)),
        "mu0": (None, _float(None, None, optional=True)),
        "sigma": (None, _float(0.0, None, lo_open=True, optional=True)),
        "warmup": (1000, _int(2)),
    },
}


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of a topology: its kind and its complete, validated parameters.

    Build it with `DetectorSpec.parse`, which fills the defaults, so `params` is always the full
    effective parameter set (what an alarm reports and what a snapshot is checked against)."""

    kind: str
    params: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Read-only, so a spec shared by monitors and alarms cannot be changed behind their back.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.params.items()))))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DetectorSpec) and self.kind == other.kind and dict(self.params) == dict(other.params)

    @classmethod
    def parse(cls, kind: str, params: Mapping[str, Any] | None = None) -> DetectorSpec:
        """Validate `params` for `kind` and fill in the defaults.

        Raises ValueError naming the detector, the parameter and what is expected; an unknown
        parameter name lists the allowed ones."""
        table = _PARAMS.get(kind)
        if table is None:
            raise ValueError(f"unknown concept drift detector {kind!r}; expected one of {', '.join(KINDS)}")
        given = dict(params or {})
        unknown = sorted(set(given) - set(table), key=str)
        if unknown:
            raise ValueError(f"concept drift detector {kind!r}: unknown parameter {unknown[0]!r}; "
                             f"allowed: {', '.join(table)}")
        full = {name: check(kind, name, given.get(name, default)) for name, (default, check) in table.items()}
        if kind == "kswin" and full["window_size"] < 2 * full["stat_size"]:
            # river checks only window_size >= stat_size, but then samples stat_size values from the
            # window's first window_size - stat_size ones, which fails at the first full window.
            raise ValueError(f"concept drift detector 'kswin': parameter 'window_size' must be at least "
                             f"2 * stat_size = {2 * full['stat_size']}, got {full['window_size']}")
        return cls(kind, full)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


# -- CUSUM ----------------------------------------------------------------------------------------

class CUSUM:
    """One-sided upper CUSUM (Page 1954) for an increase of the mean of the error stream.

        S_t = max(0, S_{t-1} + x_t - (mu0 + k * sigma)),   alarm when S_t > h * sigma, then S_t = 0.

    Parameters (k and h in units of the in-control standard deviation sigma, the usual control
    chart design, so one setting fits 0/1 errors and regression errors of any scale):

    - `k`: the allowance. k = delta / 2 is the optimal choice (for normal data) to detect a shift of
      the mean by delta sigma; the default 0.25 targets delta = 0.5 sigma, e.g. an error rate going
      from 2% to 9%. Shifts smaller than k sigma make the statistic drift down: not detected.
    - `h`: the decision threshold. Default 50, ten times the textbook value, because 0/1 errors
      at a low rate are far from normal (one error is a 7 sigma jump at 2%): docs/drift.md
      derives the false-alarm rate and the detection delay behind it.
    - `mu0`, `sigma`: the in-control mean and standard deviation. Those not given (null) are
      estimated from the first `warmup` outcomes (default 1000; no alarm during the warm-up):
      the mean and the population standard deviation (for 0/1 errors sqrt(p (1 - p))). If the
      warm-up values are all equal (a model without a single error in them), sigma would be 0
      and any error would alarm, so it is floored at sqrt(warmup - 1) / warmup, the value had one
      outcome differed by one (one misclassification).
    - After an alarm S restarts at 0, and estimated mu0 / sigma are estimated again from the next
      `warmup` outcomes, like river's detectors, which restart from scratch: the new level
      becomes normal and the next alarm means a further increase. Given values stay.
    """

    __slots__ = ("k", "h", "mu0", "sigma", "warmup", "s", "n", "_ref", "_limit", "_wn", "_wmean", "_wm2",
                 "_drift_detected")

    def __init__(self, k: float = 0.25, h: float = 50.0, mu0: float | None = None, sigma: float | None = None,
                 warmup: int = 1000) -> None:
        self.k, self.h, self.mu0, self.sigma, self.warmup = k, h, mu0, sigma, warmup
        self.s = 0.0  # the CUSUM statistic
        self.n = 0  # outcomes seen
        self._drift_detected = False
        self._start()

    def _start(self) -> None:
        """Begin (again): S = 0, and a warm-up if mu0 or sigma must be estimated."""
        self.s = 0.0
        self._wn, self._wmean, self._wm2 = 0, 0.0, 0.0  # Welford accumulators of the warm-up
        if self.mu0 is not None and self.sigma is not None:
            self._set_reference(self.mu0, self.sigma)
        else:
            self._ref = self._limit = math.nan  # in warm-up

    def _set_reference(self, mu0: float, sigma: float) -> None:
        self._ref = mu0 + self.k * sigma
        self._limit = self.h * sigma

    def _end_warmup(self) -> None:
        n = self._wn
        mu0 = self._wmean if self.mu0 is None else self.mu0
        if self.sigma is not None:
            sigma = self.sigma
        else:
            sigma = max(math.sqrt(self._wm2 / n), math.sqrt(n - 1) / n)
        self._set_reference(mu0, sigma)

    @property
    def drift_detected(self) -> bool:
        """Whether the last update raised an alarm (river's interface)."""
        return self._drift_detected

    @property
    def in_warmup(self) -> bool:
        return math.isnan(self._ref)

    @property
    def reference(self) -> tuple[float, float] | None:
        """(mu0 + k sigma, h sigma) in use, None during a warm-up."""
        return None if self.in_warmup else (self._ref, self._limit)

    def update(self, x: float) -> None:
        """One outcome (river's interface; `feed` is the fast path for many)."""
        self._drift_detected = bool(self.feed([x]))

    def feed(self, xs: Sequence[float]) -> list[int]:
        """Feed outcomes in order; the offsets (into `xs`) of those that raised an alarm."""
        alarms: list[int] = []
        s, ref, limit = self.s, self._ref, self._limit
        i, n = 0, len(xs)
        while i < n:
            if ref != ref:  # NaN: in warm-up
                while i < n and self._wn < self.warmup:
                    x = xs[i]
                    self._wn += 1
                    d = x - self._wmean
                    self._wmean += d / self._wn
                    self._wm2 += d * (x - self._wmean)
                    i += 1
                if self._wn < self.warmup:
                    break
                self._end_warmup()
                s, ref, limit = 0.0, self._ref, self._limit
                continue
            while i < n:
                s += xs[i] - ref
                if s < 0.0:
                    s = 0.0
                elif s > limit:
                    alarms.append(i)
                    i += 1
                    self._start()
                    s, ref, limit = self.s, self._ref, self._limit
                    break
                i += 1
        self.s = s
        self.n += n
        self._drift_detected = bool(alarms) and alarms[-1] == n - 1
        return alarms

    def state(self) -> dict[str, Any]:
        return {"s": self.s, "n": self.n, "ref": _enc_float(self._ref), "limit": _enc_float(self._limit),
                "wn": self._wn, "wmean": self._wmean, "wm2": self._wm2, "drift_detected": self._drift_detected}

    def set_state(self, data: Mapping[str, Any]) -> None:
        self.s, self.n = float(data["s"]), int(data["n"])
        self._ref, self._limit = float(data["ref"]), float(data["limit"])
        self._wn, self._wmean, self._wm2 = int(data["wn"]), float(data["wmean"]), float(data["wm2"])
        self._drift_detected = bool(data["drift_detected"])


def _enc_float(x: float) -> float | str:
    """A float as JSON data: finite ones as numbers (Python's JSON round-trips them exactly),
    inf / nan as the strings float() reads back."""
    return x if math.isfinite(x) else repr(x)


# -- alarms -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConceptAlarm:
    """A detector's alarm: a drift event with the detector, its parameters and the position.

    `position`: 0-based index, counted from the monitor's start, of the outcome that raised it.
    `context`: whatever the caller passed with the batch (e.g. the pane start)."""

    detector: str
    params: Mapping[str, Any]
    position: int
    context: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"detector": self.detector, "params": dict(self.params), "position": self.position,
                "context": dict(self.context)}


# -- runners: one detector each, with a fast feed and a JSON state ------------------------------------

def _river_feed(detector: Any, xs: Sequence[float]) -> list[int]:
    alarms: list[int] = []
    update = detector.update
    for i, x in enumerate(xs):
        update(x)
        if detector.drift_detected:
            alarms.append(i)
    return alarms


class _PageHinkleyRunner:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self.detector = _river_drift().PageHinkley(**params)

    def feed(self, values: np.ndarray, xs: list[float]) -> list[int]:
        return _river_feed(self.detector, xs)

    def state(self) -> dict[str, Any]:
        d = self.detector
        return {"drift_detected": d._drift_detected, "mean_n": d._x_mean.n, "mean": d._x_mean._mean,
                "sum_increase": d._sum_increase, "sum_decrease": d._sum_decrease,
                "min_increase": _enc_float(d._min_increase), "max_decrease": _enc_float(float(d._max_decrease))}

    def set_state(self, data: Mapping[str, Any]) -> None:
        d = self.detector
        d._drift_detected = bool(data["drift_detected"])
        d._x_mean.n, d._x_mean._mean = float(data["mean_n"]), float(data["mean"])
        d._sum_increase, d._sum_decrease = float(data["sum_increase"]), float(data["sum_decrease"])
        d._min_increase, d._max_decrease = float(data["min_increase"]), float(data["max_decrease"])


class _KSWINRunner:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self.detector = _river_drift().KSWIN(**params)

    def feed(self, values: np.ndarray, xs: list[float]) -> list[int]:
        return _river_feed(self.detector, xs)

    def state(self) -> dict[str, Any]:
        d = self.detector
        version, internal, gauss = d._rng.getstate()
        return {"drift_detected": d._drift_detected, "n": d.n, "p_value": float(d.p_value),
                "window": [float(x) for x in d.window],
                "rng": {"version": version, "state": list(internal), "gauss_next": gauss}}

    def set_state(self, data: Mapping[str, Any]) -> None:
        d = self.detector
        d._drift_detected = bool(data["drift_detected"])
        d.n, d.p_value = int(data["n"]), float(data["p_value"])
        d.window = collections.deque(map(float, data["window"]), maxlen=d.window_size)
        rng = data["rng"]
        d._rng.setstate((rng["version"], tuple(rng["state"]), rng["gauss_next"]))


class _CusumRunner:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self.detector = CUSUM(**params)

    def feed(self, values: np.ndarray, xs: list[float]) -> list[int]:
        return self.detector.feed(xs)

    def state(self) -> dict[str, Any]:
        return self.detector.state()

    def set_state(self, data: Mapping[str, Any]) -> None:
        self.detector.set_state(data)


class _AdwinRunner:
    """river's ADWIN plus its inputs since its last (re)start, to rebuild it by replay."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.max_history = int(params["max_history"])
        self._river_params = {k: v for k, v in params.items() if k != "max_history"}
        self.detector = _river_drift().ADWIN(**self._river_params)
        self.epoch_length = 0  # outcomes fed to `detector` since it was (re)started
        self.history: list[np.ndarray] = []  # those outcomes, as bool arrays when all are 0/1

    def _restart(self) -> None:
        # Same as river's lazy `_reset()` at the next update after an alarm (a new Rust helper).
        self.detector = _river_drift().ADWIN(**self._river_params)
        self.epoch_length = 0
        self.history = []

    def _keep(self, chunk: np.ndarray) -> None:
        if len(chunk):
            binary = bool(np.all((chunk == 0.0) | (chunk == 1.0)))
            self.history.append(chunk.astype(bool) if binary else chunk.copy())

    def feed(self, values: np.ndarray, xs: list[float]) -> list[int]:
        alarms: list[int] = []
        i, n = 0, len(xs)
        while i < n:
            if self.epoch_length >= self.max_history:
                self._restart()  # forced: bounds the history (a function of the stream only)
            end = min(n, i + self.max_history - self.epoch_length)
            update = self.detector.update
            detector = self.detector
            j = i
            alarm = False
            while j < end:
                update(xs[j])
                j += 1
                if detector.drift_detected:
                    alarm = True
                    break
            if alarm:
                alarms.append(j - 1)
                self._restart()  # the epoch after an alarm starts with the next outcome
            else:
                self._keep(values[i:j])
                self.epoch_length += j - i
            i = j
        return alarms

    def history_array(self) -> np.ndarray:
        if not self.history:
            return np.zeros(0)
        if all(c.dtype == np.bool_ for c in self.history):
            return np.concatenate(self.history)
        return np.concatenate([c.astype(np.float64) for c in self.history])

    def state(self) -> dict[str, Any]:
        h = self.history_array()
        if h.dtype == np.bool_:
            encoded = {"bits": _b64(np.packbits(h)), "n": len(h)}
        else:
            encoded = {"float64": _b64(h.astype("<f8")), "n": len(h)}
        return {"epoch_length": self.epoch_length, "history": encoded}

    def set_state(self, data: Mapping[str, Any]) -> None:
        enc = data["history"]
        n = int(enc["n"])
        if "bits" in enc:
            values = np.unpackbits(np.frombuffer(base64.b64decode(enc["bits"]), dtype=np.uint8), count=n)
            history = values.astype(np.float64)
        else:
            history = np.frombuffer(base64.b64decode(enc["float64"]), dtype="<f8").astype(np.float64)
        if len(history) != n or int(data["epoch_length"]) != n:
            raise ValueError(f"ADWIN snapshot: history of {len(history)} outcomes, expected {n} "
                             f"(epoch length {data['epoch_length']})")
        self._restart()
        xs = history.tolist()
        replayed = _river_feed(self.detector, xs)
        if replayed:
            # An alarm inside an epoch would have ended it: the running river is not the one that
            # wrote the snapshot, or the snapshot is not from this monitor.
            raise ValueError(f"ADWIN snapshot: replaying its {n} outcomes raised an alarm at offset "
                             f"{replayed[0]}; the snapshot does not match this detector (river {_river_version()})")
        self.epoch_length = n
        self._keep(history)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


_RUNNERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "adwin": _AdwinRunner, "page_hinkley": _PageHinkleyRunner, "kswin": _KSWINRunner, "cusum": _CusumRunner,
}


# -- the monitor --------------------------------------------------------------------------------

class ConceptDriftMonitor:
    """All configured detectors on one model version's stream of errors.

    Each detector costs per outcome what it costs used directly (docs/drift.md lists them: KSWIN
    runs a KS test per outcome, for slow streams only). Memory: ADWIN's replay history, up to
    `max_history` outcomes per ADWIN (1 byte each in memory and 1 bit in the snapshot for 0/1
    errors; 8 bytes each, and 8 in the snapshot, for floats)."""

    def __init__(self, specs: Sequence[DetectorSpec]) -> None:
        for spec in specs:
            if not isinstance(spec, DetectorSpec):
                raise TypeError(f"ConceptDriftMonitor: expected DetectorSpec, got {type(spec).__name__}")
        self.specs = tuple(specs)
        self._runners = [_RUNNERS[spec.kind](spec.params) for spec in self.specs]
        self.count = 0  # outcomes seen since the monitor's start

    def update(self, errors: np.ndarray | Sequence[float], context: Mapping[str, Any] | None = None,
               ) -> list[ConceptAlarm]:
        """Feed `errors` in order to every detector; the alarms they raise, by position.

        `errors`: 0/1 misclassifications (classification) or absolute errors (regression), 1-D
        and finite. `context` is attached to every alarm of this batch as given."""
        values = np.asarray(errors, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"ConceptDriftMonitor.update: errors must be 1-D, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"ConceptDriftMonitor.update: errors must be finite, got {values[bad]!r} "
                             f"at offset {bad} (position {self.count + bad})")
        xs = values.tolist()
        ctx: Mapping[str, Any] = MappingProxyType(dict(context or {}))
        alarms = [ConceptAlarm(spec.kind, spec.params, self.count + offset, ctx)
                  for spec, runner in zip(self.specs, self._runners) for offset in runner.feed(values, xs)]
        alarms.sort(key=lambda a: a.position)  # stable: detectors in spec order at one position
        self.count += len(xs)
        return alarms

    def snapshot(self) -> dict[str, Any]:
        """The monitor as JSON-safe plain data (see `restore`)."""
        return {"version": SNAPSHOT_VERSION, "river": _river_version(), "count": self.count,
                "specs": [spec.to_json() for spec in self.specs],
                "detectors": [runner.state() for runner in self._runners]}

    @classmethod
    def restore(cls, specs: Sequence[DetectorSpec], data: Mapping[str, Any]) -> ConceptDriftMonitor:
        """A monitor that raises exactly the future alarms the snapshotted one would have.

        Refuses (ValueError) a snapshot written under other specs: its state would not mean the
        same thing. ADWIN is rebuilt by replaying its stored epoch."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"concept drift snapshot: version {data.get('version')!r}, "
                             f"this code reads {SNAPSHOT_VERSION}")
        monitor = cls(specs)
        stored = data["specs"]
        expected = [spec.to_json() for spec in monitor.specs]
        if stored != expected:
            raise ValueError(f"concept drift snapshot was written for detectors {stored}, "
                             f"cannot restore it for {expected}")
        states = data["detectors"]
        if len(states) != len(monitor._runners):
            raise ValueError(f"concept drift snapshot: {len(states)} detector states for {len(expected)} specs")
        for spec, runner, state in zip(monitor.specs, monitor._runners, states):
            try:
                runner.set_state(state)
            except (KeyError, TypeError) as exc:
                raise ValueError(f"concept drift snapshot: bad state for detector {spec.kind!r}: {exc!r}") from exc
        monitor.count = int(data["count"])
        return monitor


# -- canonical order within a pane ---------------------------------------------------------------

def _rng(seed_key: str) -> np.random.Generator:
    """A generator seeded from `seed_key` by SHA-256 (Python's hash() of a str is salted per process)."""
    digest = hashlib.sha256(seed_key.encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


def pane_sequence(n_outcomes: int, n_errors: int, seed_key: str) -> np.ndarray:
    """The errors of one event-time pane of a classification model, in a canonical order.

    A 0/1 float64 array of length `n_outcomes` with `n_errors` ones at seeded pseudo-random
    places: the same for the same key whatever the arrival order was (so a restarted worker feeds
    the detectors the same sequence), without bunching the errors together as sorting would
    (that would look like a burst to ADWIN / CUSUM). Use a key naming the version and the pane.
    The order is numpy's PCG64 permutation: stable across runs of one numpy version."""
    if isinstance(n_outcomes, bool) or not isinstance(n_outcomes, (int, np.integer)) or n_outcomes < 0:
        raise ValueError(f"pane_sequence: n_outcomes must be an integer >= 0, got {n_outcomes!r}")
    if isinstance(n_errors, bool) or not isinstance(n_errors, (int, np.integer)) or not 0 <= n_errors <= n_outcomes:
        raise ValueError(f"pane_sequence: n_errors must be an integer in [0, n_outcomes = {n_outcomes}], "
                         f"got {n_errors!r}")
    out = np.zeros(int(n_outcomes), dtype=np.float64)
    out[:n_errors] = 1.0
    _rng(seed_key).shuffle(out)
    return out


def pane_values_sequence(values: np.ndarray | Sequence[float], seed_key: str) -> np.ndarray:
    """The errors of one pane of a regression model in a canonical order: sorted (which removes
    the arrival order), then shuffled with a generator seeded from `seed_key` (see pane_sequence)."""
    out = np.sort(np.asarray(values, dtype=np.float64).ravel())
    _rng(seed_key).shuffle(out)
    return out


__all__ = ["CUSUM", "ConceptAlarm", "ConceptDriftMonitor", "DetectorSpec", "KINDS", "pane_sequence",
           "pane_values_sequence"]

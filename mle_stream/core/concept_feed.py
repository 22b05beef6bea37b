"""Concept drift, fed pane by pane: what a model's detectors (core/drift/concept.py) are given
when a window closes, and the alarms they raised, per tracked version.

A closing window feeds the errors of its last pane (the pane it is the first to hold), once.
Within a pane, arrival order would not be the same after a restart, so its labeled outcomes go
in a canonical order: a classifier's error count spread by a shuffle seeded with model, version
and pane, a regression's absolute errors shuffled the same way. Labels that arrive after the
window closed update its metrics but not the detectors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mle_stream.core.drift.concept import ConceptDriftMonitor, DetectorSpec, pane_sequence, pane_values_sequence


class ConceptDriftFeed:
    """The detectors of each tracked version, the alarms they raised by (version, window start),
    and, for a task without decisions (`error_values`), the absolute errors of panes not yet fed."""

    def __init__(self, model: str, versions: Iterable[str], specs: Sequence[DetectorSpec],
                 error_values: bool) -> None:
        self.model = model
        self.specs = specs
        self.error_values = error_values
        self.monitors = {v: ConceptDriftMonitor(specs) for v in versions if specs}
        self._alarms: dict[tuple[str, int], list[dict[str, Any]]] = {}
        # (pane, version) -> (absolute errors, weights: -1 takes a corrected one out), per batch.
        self._abs_errors: defaultdict[tuple[int, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        self._fed_until = -1  # the last pane start fed to the detectors

    def tracks(self, version: str) -> bool:
        return version in self.monitors

    def add_outcomes(self, pane: int, version: str, y: np.ndarray, predicted: np.ndarray,
                     weights: np.ndarray) -> None:
        """Joined whole-version rows of a pane, for a task whose detectors read absolute errors;
        a pane already fed takes no more."""
        if self.error_values and version in self.monitors and pane > self._fed_until:
            self._abs_errors[(pane, version)].append((np.abs(predicted - y), weights))

    def feed(self, start: int, pane: int, labeled_errors: Callable[[str], tuple[int, int]]) -> None:
        """The window starting at `start` closes: feed each version's detectors the errors of
        `pane`, its last; `labeled_errors(version)`: the pane's labeled outcomes and errors, for
        a task with decisions."""
        self._fed_until = max(self._fed_until, pane)
        for version, monitor in self.monitors.items():
            key = f"{self.model}/{version}/{pane}"
            if self.error_values:
                sequence = pane_values_sequence(_net_values(self._abs_errors.pop((pane, version), [])), key)
            else:
                sequence = pane_sequence(*labeled_errors(version), key)
            if len(sequence) == 0:
                continue
            alarms = monitor.update(sequence, {"pane_start": pane})
            if alarms:
                self._alarms[(version, start)] = [a.to_json() for a in alarms]

    def alarms(self, version: str, start: int) -> list[dict[str, Any]]:
        """The alarms the closing of window `start` raised for `version`."""
        return self._alarms.get((version, start), [])

    def forget(self, retained: Callable[[int], bool]) -> None:
        """Drop alarms of windows and errors of panes that retention has let go."""
        if self._alarms:
            self._alarms = {(v, start): a for (v, start), a in self._alarms.items() if retained(start)}
        for key in [(pane, v) for pane, v in self._abs_errors if not retained(pane)]:
            del self._abs_errors[key]  # a pane no closing window fed

    def snapshot(self) -> dict[str, Any]:
        """As JSON data, under the keys of the model evaluator's snapshot."""
        return {
            "monitors": {v: m.snapshot() for v, m in self.monitors.items()},
            "alarms": [[v, start, alarms] for (v, start), alarms in self._alarms.items()],
            "abs_errors": [[pane, v, np.concatenate([e for e, _ in parts]).tolist(),
                            np.concatenate([w for _, w in parts]).tolist()]
                           for (pane, v), parts in self._abs_errors.items()],
            "fed_until": self._fed_until,
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """The state of a snapshot (the detectors' settings are the topology's)."""
        self.monitors = {v: ConceptDriftMonitor.restore(self.specs, m) for v, m in data["monitors"].items()}
        self._alarms = {(str(v), int(start)): alarms for v, start, alarms in data["alarms"]}
        self._abs_errors.clear()
        for pane, v, errors, weights in data["abs_errors"]:
            self._abs_errors[(int(pane), str(v))].append((np.array(errors, dtype=np.float64),
                                                          np.array(weights, dtype=np.float64)))
        self._fed_until = int(data["fed_until"])


def _net_values(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The multiset of values left when each weight -1 entry takes one equal +1 entry out."""
    if not parts:
        return np.empty(0)
    values, inverse = np.unique(np.concatenate([v for v, _ in parts]), return_inverse=True)
    net = np.bincount(inverse, weights=np.concatenate([w for _, w in parts]), minlength=len(values))
    return np.repeat(values, np.maximum(np.rint(net), 0).astype(np.int64))


__all__ = ["ConceptDriftFeed"]

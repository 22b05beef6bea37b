"""The tasks a model can have (core/tasks/): the registry keeps the names topologies and the wire
use, each task reads its own output and labels and refuses the others', and an evaluator
checkpoint written before the tasks were split out (tests/data/evaluator-checkpoints.json, taken
by the code of that time) still restores and carries on as an evaluator that never stopped."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mle_stream.core.columns import PredictionColumns
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, Prediction
from mle_stream.core.record_checks import Reject
from mle_stream.core.tasks import TASKS, task_for
from mle_stream.core.topology import TASKS as TOPOLOGY_TASKS
from mle_stream.core.topology import parse_topology
from mle_stream.replay import default_topology

CHECKPOINTS = Path(__file__).parent / "data" / "evaluator-checkpoints.json"
NOW = 10**12
OUTPUT = {"binary": {"score": 0.8}, "multiclass": {"scores": {"a": 0.25, "b": 0.75}}, "regression": {"value": 2.5}}


def test_the_registry_holds_the_tasks_topologies_name_under_their_names() -> None:
    assert tuple(TASKS) == TOPOLOGY_TASKS
    assert all(task_for(name).name == name for name in TASKS)
    with pytest.raises(ValueError, match="unknown task 'ranking'; expected one of binary, multiclass, regression"):
        task_for("ranking")


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_reads_its_own_output_and_refuses_the_others(name: str) -> None:
    task = task_for(name)
    preds = [Prediction(prediction_id=str(i), model="m", version="1", timestamp=0, **output)
             for i, output in enumerate(OUTPUT.values())]
    cols = PredictionColumns.from_records(preds)
    ok, rejects = np.ones(3, dtype=bool), []
    outputs, decisions = task.read_outputs(cols, 0.5, np.zeros(3, dtype=bool), ok, rejects)
    mine = list(OUTPUT).index(name)
    assert ok.tolist() == [i == mine for i in range(3)]
    assert sorted(r.index for r in rejects) == [i for i in range(3) if i != mine]
    assert all(r.field == task.output_field and f"is a {name} model" in r.reason for r in rejects)
    expected = {"binary": (0.8, True), "multiclass": ({"a": 0.25, "b": 0.75}, "b"), "regression": (2.5, None)}[name]
    assert (outputs[mine], decisions[mine]) == expected
    # The replay's default topology infers the task from the same field.
    assert default_topology("m", [preds[mine]]).task == name


def test_labels_a_task_cannot_score_are_rejected_naming_the_task() -> None:
    cases = {"binary": ([True, "yes", 1, "cat"], [True, True, True, "cat"], [3]),
             "multiclass": (["a", 3, True], ["a", "3", "True"], []),
             "regression": ([1, 2.5, True, "x", 1e300], [1.0, 2.5, True, "x", 1e300], [2, 3, 4])}
    for name, (given, read, refused) in cases.items():
        rejects: list[Reject] = []
        assert task_for(name).read_truths(given, rejects) == read
        assert [r.index for r in rejects] == refused
        assert all(r.field == "label" and f"cannot score a {name} model" in r.reason for r in rejects)


@pytest.mark.parametrize("name", list(TASKS))
def test_outcomes_reach_the_metric_state_and_survive_its_snapshot(name: str) -> None:
    task = task_for(name)
    labels = {"binary": [True, False, True], "multiclass": ["a", "b", "b"], "regression": [1.0, 2.0, 4.0]}[name]
    outputs = {"binary": [0.9, 0.8, 0.2], "multiclass": [{"a": 2.0, "b": 2.0}, {"b": 1.0}, {"a": 1.0}],
               "regression": [1.5, 2.0, 1.0]}[name]
    decisions = {"binary": [True, False, False], "multiclass": ["a", "b", "a"], "regression": None}[name]
    y, score = task.truths_and_scores(np.array(labels, dtype=object), np.array(outputs, dtype=task.output_dtype))
    metrics = task.new_metrics(())
    metrics.update(task.outcomes(y, score, None if decisions is None else np.array(decisions, task.decision_dtype),
                                 np.ones(3)))
    # By hand: binary and multiclass get 1 of 3 wrong; |1.5-1| + 0 + |1-4| = 3.5 over 3.
    expected = {"binary": ("error_rate", 1 / 3), "multiclass": ("error_rate", 1 / 3), "regression": ("mae", 3.5 / 3)}
    metric, value = expected[name]
    assert metrics.values()[metric] == pytest.approx(value)
    restored = task.restore_metrics(json.loads(json.dumps(metrics.snapshot())))
    assert restored.values() == metrics.values()


# ---------------------------------------------------------------------------------------------
# Checkpoints written before the split. The topologies and the events that led to each
# checkpoint are below; tests/data/evaluator-checkpoints.json holds what the code before the
# split wrote after the first part of the events.

TOPOLOGIES = {
    "binary-shadow-segments": 'model: m\ntask: binary\nmode: shadow\nbaseline: {version: "1"}\n'
                              'candidate: {version: "2"}\nwindows: {size: 2s, grace: 0s, retention: 10s}\n'
                              'labels: {max_delay: 10s}\nshadow: {pair_within: 1s}\n'
                              'segments: {dimensions: [c], max_values: 2}\n',
    "multiclass-concept": 'model: m\ntask: multiclass\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
                          'windows: {size: 2s, hop: 1s, grace: 0s, retention: 10s}\nlabels: {max_delay: 10s}\n'
                          'drift: {concept: [{detector: page_hinkley, min_instances: 5, threshold: 2}]}\n',
    "regression-concept-segments": 'model: m\ntask: regression\nbaseline: {version: "1"}\n'
                                   'candidate: {version: "2"}\nwindows: {size: 2s, grace: 0s, retention: 10s}\n'
                                   'labels: {max_delay: 10s}\nsegments: {dimensions: [c], max_values: 2}\n'
                                   'drift: {concept: [{detector: page_hinkley, min_instances: 5, threshold: 2}]}\n',
}


def events(name: str, n: int = 600, seed: int = 5) -> list[tuple[str, list[Any]]]:
    """Batches of predictions and labels (late, corrected, duplicated) of the model `name`."""
    rng = random.Random(seed)
    task = name.split("-")[0]
    shadow = "shadow" in name
    out: list[tuple[str, list[Any]]] = []
    for b in range(n // 50):
        preds, labels = [], []
        for i in range(b * 50, b * 50 + 50):
            ts = i * 20 if rng.random() < 0.9 else max(0, i * 20 - rng.randrange(2000, 4000))  # some come late
            segment = {"c": rng.choice("xyz")} if rng.random() < 0.7 else None
            if task == "binary":
                output: dict[str, Any] = {"score": rng.random()}
                truth: Any = rng.random() < 0.4 + 0.4 * (i > n // 2)
            elif task == "multiclass":
                p = [rng.random() for _ in range(3)]
                output = {"scores": dict(zip("abc", p))}
                truth = rng.choice("abc" if i < n // 2 else "aab")
            else:
                output = {"value": rng.gauss(0, 1)}
                truth = rng.gauss(0, 1 + 3 * (i > n // 2))
            version = "1" if shadow or rng.random() < 0.7 else "2"
            preds.append(Prediction(prediction_id=f"p{i}", model="m", version=version, timestamp=ts,
                                    latency_ms=rng.uniform(1, 50), segment=segment, **output))
            if shadow and rng.random() < 0.6:  # the mirrored request's shadow prediction
                preds.append(Prediction(prediction_id=f"p{i}", model="m", version="2", timestamp=ts + 3,
                                        segment=segment, **{k: (v * 0.9 if k != "scores" else v)
                                                            for k, v in output.items()}))
            labeled = i - rng.randrange(60, 160)  # labels lag: the windows they close hold rows back
            if labeled >= 0 and rng.random() < 0.8:
                labels.append(Label(f"p{labeled}", "m", labeled * 20 + 1, truth))
        if rng.random() < 0.3:
            preds.append(preds[0])  # a redelivery
        out.append(("p", preds))
        out.append(("l", labels))
    return out


def feed(ev: ModelEvaluator, batches: list[tuple[str, list[Any]]]) -> list[str]:
    out = []
    for i, (kind, records) in enumerate(batches):
        if kind == "p":
            rejects = ev.add_predictions(records, NOW)
        else:
            rejects = ev.add_labels(records, NOW)
        out.append(repr(rejects))
        out.append(repr(ev.advance(NOW, updates=i % 4 == 0)))
    return out


CUT = 11  # batches fed before the checkpoint: predictions ahead of their labels, rows held back


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_a_checkpoint_from_before_the_split_restores_unchanged_and_carries_on(name: str) -> None:
    topology = parse_topology(TOPOLOGIES[name])
    stored = json.loads(CHECKPOINTS.read_text())[name]
    restored = ModelEvaluator.restore(topology, json.loads(json.dumps(stored)))
    # Its own snapshot is the one it came from, but for the metric states' format upgrades since.
    assert json.loads(json.dumps(restored.snapshot())) == _upgraded(stored)
    batches = events(name)
    uninterrupted = ModelEvaluator(topology)
    feed(uninterrupted, batches[:CUT])
    assert _known(feed(restored, batches[CUT:])) == _known(feed(uninterrupted, batches[CUT:]))
    assert _known([repr(restored.close_all(NOW))]) == _known([repr(uninterrupted.close_all(NOW))])


# Metric states' snapshot formats since the checkpoints were written: what each upgrade adds, which
# the old format did not keep (the spreads these give are None in the windows it restores).
_UPGRADES = {("binary", 2): {"v": 3, "brier_sq_sum": None}, ("regression", 2): {"v": 3, "fourth_sum": None}}
_NEW_VALUES = re.compile(r"'(brier_score_std|squared_error_std)': [^,}]+")


def _upgraded(data: Any) -> Any:
    if isinstance(data, list):
        return [_upgraded(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: _upgraded(v) for k, v in data.items()}
    return out | _UPGRADES.get((out.get("kind"), out.get("v")), {})


def _known(lines: list[str]) -> list[str]:
    """The outputs without the values an older checkpoint cannot give."""
    return [_NEW_VALUES.sub(r"'\1': ?", line) for line in lines]


def write_checkpoints() -> None:
    """Writes tests/data/evaluator-checkpoints.json (run with the code whose format it records)."""
    data = {}
    for name, text in TOPOLOGIES.items():
        ev = ModelEvaluator(parse_topology(text))
        feed(ev, events(name)[:CUT])
        data[name] = ev.snapshot()
    CHECKPOINTS.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    write_checkpoints()


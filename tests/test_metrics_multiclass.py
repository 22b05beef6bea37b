"""MulticlassMetrics against scikit-learn, and what happens past max_classes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

from mle_stream.core.metrics.multiclass import MulticlassMetrics
from mle_stream.core.metrics.outcomes import MulticlassOutcomes
from test_metrics_contract import concat, multiclass_batches


def merged_state(batches: list[MulticlassOutcomes], max_classes: int = 1000) -> MulticlassMetrics:
    state = MulticlassMetrics(max_classes)
    for batch in batches:
        part = MulticlassMetrics(max_classes)
        part.update(batch)
        state = state.merge(part)
    return state


def sklearn_log_loss(y: np.ndarray, p_true: np.ndarray, classes: list[str]) -> float:
    """sklearn's log_loss of a probability matrix whose true column holds p_true (the rest of the
    mass spread evenly; only the true column counts)."""
    labels = classes if len(classes) > 1 else classes + ["~unused"]  # sklearn needs two columns
    column = {c: i for i, c in enumerate(labels)}
    proba = np.repeat(((1.0 - p_true) / (len(labels) - 1))[:, None], len(labels), axis=1)
    proba[np.arange(len(y)), [column[c] for c in y]] = p_true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows need not sum to 1 exactly
        return float(log_loss(y, proba, labels=labels))


@settings(max_examples=60, deadline=None)
@given(st.lists(multiclass_batches(max_size=40), min_size=1, max_size=4))
def test_every_metric_matches_sklearn(batches: list[MulticlassOutcomes]) -> None:
    whole = batches[0]
    for b in batches[1:]:
        whole = concat(whole, b)
    if len(whole) == 0:
        return
    y, pred = whole.y_true.astype(str), whole.predicted.astype(str)
    got = merged_state(batches).values()
    classes = sorted(set(y) | set(pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recall of a class never true: sklearn warns, returns 0.0
        recalls = recall_score(y, pred, labels=classes, average=None)
        want = {
            "count": len(y), "classes": len(classes), "classes_overflowed": 0,
            "accuracy": accuracy_score(y, pred),
            "error_rate": float(np.mean(y != pred)),
            "micro_f1": f1_score(y, pred, average="micro"),
            "macro_f1": f1_score(y, pred, average="macro"),
            "log_loss": sklearn_log_loss(y, whole.p_true, classes),
        } | {f"recall[{c}]": r for c, r in zip(classes, recalls)}
        want |= {f"label_rate[{c}]": float(np.mean(y == c)) for c in classes}  # a sequential recall[c] reads it
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-12), (name, got[name], value)


def test_hand_computed_case() -> None:
    state = MulticlassMetrics()
    state.update(MulticlassOutcomes(
        y_true=np.array(["cat", "cat", "dog", "bird"], dtype=object),
        predicted=np.array(["cat", "dog", "dog", "dog"], dtype=object),
        p_true=np.array([0.8, 0.3, 0.6, 0.1]),
    ))
    v = state.values()
    assert v["accuracy"] == v["micro_f1"] == 0.5
    # F1: cat 2*1/(2+0+1) = 2/3, dog 2*1/(2+2+0) = 1/2, bird 0.
    assert math.isclose(v["macro_f1"], (2 / 3 + 1 / 2 + 0) / 3)
    assert (v["recall[cat]"], v["recall[dog]"], v["recall[bird]"]) == (0.5, 1.0, 0.0)
    assert math.isclose(v["log_loss"], -(math.log(0.8) + math.log(0.3) + math.log(0.6) + math.log(0.1)) / 4)
    assert (v["count"], v["classes"], v["classes_overflowed"]) == (4, 3, 0)


def test_states_with_different_class_sets_merge() -> None:
    a, b = MulticlassMetrics(), MulticlassMetrics()
    a.update(MulticlassOutcomes(np.array(["x", "y"], dtype=object), np.array(["x", "x"], dtype=object),
                                np.array([0.9, 0.2])))
    b.update(MulticlassOutcomes(np.array(["z"], dtype=object), np.array(["z"], dtype=object), np.array([0.7])))
    v = a.merge(b).values()
    assert (v["recall[x]"], v["recall[y]"], v["recall[z]"], v["classes"]) == (1.0, 0.0, 1.0, 3)


def test_labels_are_compared_as_strings() -> None:
    state = MulticlassMetrics()
    state.update(MulticlassOutcomes(np.array([3, 3], dtype=object), np.array(["3", 4], dtype=object),
                                    np.array([0.5, 0.5])))
    assert state.values()["recall[3]"] == 0.5 and "recall[4]" in state.values()


def test_p_true_clipping_matches_sklearn() -> None:
    state = MulticlassMetrics()
    state.update(MulticlassOutcomes(np.array(["a", "b"], dtype=object), np.array(["b", "b"], dtype=object),
                                    np.array([0.0, 1.0])))
    eps = np.finfo(np.float64).eps
    assert state.values()["log_loss"] == pytest.approx((-math.log(eps) - math.log(1 - eps)) / 2, rel=1e-12)
    assert state.values()["log_loss"] == pytest.approx(sklearn_log_loss(np.array(["a", "b"]), np.array([0.0, 1.0]),
                                                                        ["a", "b"]), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(multiclass_batches(max_size=30, classes=list("abcdefg")), min_size=1, max_size=4),
       st.integers(1, 4))
def test_overflow_keeps_the_smallest_names_and_exact_totals(batches: list[MulticlassOutcomes],
                                                             max_classes: int) -> None:
    whole = batches[0]
    for b in batches[1:]:
        whole = concat(whole, b)
    if len(whole) == 0:
        return
    y, pred = whole.y_true.astype(str), whole.predicted.astype(str)
    got = merged_state(batches, max_classes).values()
    classes = sorted(set(y) | set(pred))
    kept = classes[:max_classes]
    overflowed = len(classes) > max_classes
    assert got["classes_overflowed"] == int(overflowed)
    # Totals stay exact, even for rows between two folded classes.
    assert math.isclose(got["accuracy"], accuracy_score(y, pred), rel_tol=1e-12)
    assert math.isclose(got["log_loss"], sklearn_log_loss(y, whole.p_true, classes), rel_tol=1e-9)
    # The kept classes' recall is exact; the rest is "__other__" as one class.
    fold = np.vectorize(lambda c: c if c in kept else "__other__")
    y_f, pred_f = fold(y), fold(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in kept:
            if c in set(y_f) | set(pred_f):
                assert math.isclose(got[f"recall[{c}]"], recall_score(y_f, pred_f, labels=[c], average=None)[0])
    names = {k[len("recall["):-1] for k in got if k.startswith("recall[")}
    assert names <= set(kept) | {"__other__"}
    if overflowed:
        # "__other__" hits are the folded rows predicted right; misses between folded classes count
        # against it, unlike what folding the labels first and asking sklearn would give.
        other = y_f == "__other__"
        want = float(np.mean(y[other] == pred[other])) if other.any() else 0.0  # only predicted: 0.0
        assert math.isclose(got["recall[__other__]"], want)


def test_folded_misses_are_not_counted_as_hits() -> None:
    state = MulticlassMetrics(max_classes=1)
    state.update(MulticlassOutcomes(np.array(["a", "y", "z"], dtype=object), np.array(["a", "z", "y"], dtype=object),
                                    np.array([0.9, 0.1, 0.1])))
    v = state.values()
    assert v["accuracy"] == pytest.approx(1 / 3)  # folding "y" and "z" into one class must not fix their misses
    assert v["recall[__other__]"] == 0.0 and v["recall[a]"] == 1.0
    assert v["classes_overflowed"] == 1 and v["classes"] == 2

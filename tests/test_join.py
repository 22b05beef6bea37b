"""The label join's rules, hand-checked case by case on the evaluator's join (ColumnJoin).
tests/test_column_join.py checks it against the record-by-record reference on random batches."""

import numpy as np
import pytest

from mle_stream.core.column_join import ColumnJoin, ColumnJoined
from mle_stream.core.events import binary_truth


def join(max_delay_ms: int, correction_ms: int) -> ColumnJoin:
    return ColumnJoin(max_delay_ms, correction_ms, {"output": np.float64})


def predict(j: ColumnJoin, pid: str, ts: int, output: float) -> ColumnJoined:
    return j.add_predictions([pid], [ts], {"output": np.array([output])})


def rows(joined: ColumnJoined) -> list[tuple[float, object, float]]:
    """(prediction's output, label, weight) per joined row."""
    return list(zip(joined.predictions["output"].tolist(), joined.labels.tolist(), joined.weights.tolist()))


def test_label_after_prediction_and_before_it() -> None:
    j = join(max_delay_ms=10_000, correction_ms=0)
    assert rows(predict(j, "a", 1000, 0.1)) == [] and j.pending == (1, 0)
    assert rows(j.add_labels(["a"], [2000], [True])) == [(0.1, True, 1.0)]
    assert rows(j.add_labels(["b"], [2000], [False])) == [] and j.pending == (0, 1)  # label first
    assert rows(predict(j, "b", 1500, 0.2)) == [(0.2, False, 1.0)]
    assert j.pending == (0, 0) and j.joined == 2


def test_a_different_second_label_is_a_correction_the_same_one_a_duplicate() -> None:
    j = join(max_delay_ms=10_000, correction_ms=5_000)
    predict(j, "a", 1000, 0.7)
    j.add_labels(["a"], [1100], [True])
    same = j.add_labels(["a"], [1200], [True])
    assert rows(same) == [] and same.duplicates.tolist() == [0]
    # The old outcome out, the new one in: never counted twice.
    assert rows(j.add_labels(["a"], [1300], [False])) == [(0.7, True, -1.0), (0.7, False, 1.0)]
    again = predict(j, "a", 1000, 0.7)
    assert rows(again) == [] and again.duplicates.tolist() == [0]
    assert (j.corrections, j.duplicates) == (1, 2)


def test_a_newer_label_replaces_an_older_one_still_waiting() -> None:
    j = join(max_delay_ms=10_000, correction_ms=0)
    j.add_labels(["a"], [1000], [True])
    j.add_labels(["a"], [1100], [False])
    assert rows(predict(j, "a", 900, 0.3)) == [(0.3, False, 1.0)]


def test_a_batch_is_as_if_its_records_came_one_by_one() -> None:
    j = join(max_delay_ms=10_000, correction_ms=5_000)
    joined = j.add_labels(["x", "x", "x"], [100, 110, 120], [True, True, False])  # all before the prediction
    assert rows(joined) == [] and joined.duplicates.tolist() == [1]
    assert rows(predict(j, "x", 50, 0.9)) == [(0.9, False, 1.0)]


def test_expiry_unlabeled_predictions_orphan_labels_and_joined_pairs() -> None:
    j = join(max_delay_ms=1_000, correction_ms=2_000)
    predict(j, "old", 1_000, 0.1)
    predict(j, "new", 5_000, 0.1)
    j.add_labels(["orphan"], [1_500], [True])
    predict(j, "done", 3_000, 0.1)
    j.add_labels(["done"], [3_100], [True])
    j.expire(watermark=5_500)  # pending horizon 4500, joined horizon 2500
    assert j.pending == (1, 0) and j.joined == 1
    assert (j.expired_predictions, j.expired_labels) == (1, 1)
    j.expire(watermark=7_000)  # joined horizon 4000 > 3000: the correction window for 'done' is over
    assert j.joined == 0 and j.expired_predictions == 2  # 'new' too: pending horizon 6000
    assert rows(j.add_labels(["done"], [7_000], [False])) == [] and j.pending == (0, 1)  # no longer correctable


@pytest.mark.parametrize("value,expected", [(True, True), (0, False), (1.0, True), ("yes", True), (" False ", False)])
def test_binary_truth(value: object, expected: bool) -> None:
    assert binary_truth(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["cat", 2, 0.5])
def test_binary_truth_rejects_other_values(value: object) -> None:
    with pytest.raises(ValueError, match="binary label"):
        binary_truth(value)  # type: ignore[arg-type]

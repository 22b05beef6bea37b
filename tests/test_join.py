import pytest

from mle_stream.core.events import Label, Prediction
from mle_stream.core.join import LabelJoin, binary_truth


def pred(pid: str, ts: int = 1000) -> Prediction:
    return Prediction(prediction_id=pid, model="m", version="1", timestamp=ts, score=0.9)


def lab(pid: str, ts: int = 2000, value: object = 1) -> Label:
    return Label(prediction_id=pid, model="m", timestamp=ts, label=value)  # type: ignore[arg-type]


def test_label_after_prediction_and_before_it() -> None:
    j = LabelJoin(max_delay_ms=10_000)
    assert j.add_prediction(pred("a")) is None
    joined = j.add_label(lab("a"))
    assert joined is not None and joined.prediction.prediction_id == "a"
    assert j.add_label(lab("b")) is None  # label first
    joined = j.add_prediction(pred("b"))
    assert joined is not None and joined.label.prediction_id == "b"
    assert j.pending == (0, 0)


def test_a_repeated_label_cannot_join_twice() -> None:
    j = LabelJoin(max_delay_ms=10_000)
    j.add_prediction(pred("a"))
    assert j.add_label(lab("a")) is not None
    assert j.add_label(lab("a")) is None
    assert j.pending == (0, 1)


def test_unlabeled_predictions_and_orphan_labels_expire() -> None:
    j = LabelJoin(max_delay_ms=1_000)
    j.add_prediction(pred("old", ts=1_000))
    j.add_prediction(pred("new", ts=5_000))
    j.add_label(lab("orphan", ts=1_500))
    j.expire(watermark=5_500)
    assert j.pending == (1, 0)
    assert (j.expired_predictions, j.expired_labels) == (1, 1)


@pytest.mark.parametrize("value,expected", [(True, True), (0, False), (1.0, True), ("yes", True), (" False ", False)])
def test_binary_truth(value: object, expected: bool) -> None:
    assert binary_truth(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["cat", 2, 0.5])
def test_binary_truth_rejects_other_values(value: object) -> None:
    with pytest.raises(ValueError, match="binary label"):
        binary_truth(value)  # type: ignore[arg-type]

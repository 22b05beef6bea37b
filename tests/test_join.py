import pytest

from mle_stream.core.join import Arrival, LabelJoin, binary_truth


def test_label_after_prediction_and_before_it() -> None:
    j: LabelJoin[str] = LabelJoin(max_delay_ms=10_000, correction_ms=0)
    assert j.add_prediction("a", 1000, "pa").arrival is Arrival.WAITING
    r = j.add_label("a", 2000, True)
    assert (r.arrival, r.prediction, r.label) == (Arrival.JOINED, "pa", True)
    assert j.add_label("b", 2000, False).arrival is Arrival.WAITING  # label first
    r = j.add_prediction("b", 1500, "pb")
    assert (r.arrival, r.prediction, r.label) == (Arrival.JOINED, "pb", False)
    assert j.pending == (0, 0) and j.joined == 2


def test_a_different_second_label_is_a_correction_the_same_one_a_duplicate() -> None:
    j: LabelJoin[str] = LabelJoin(max_delay_ms=10_000, correction_ms=5_000)
    j.add_prediction("a", 1000, "pa")
    j.add_label("a", 1100, True)
    assert j.add_label("a", 1200, True).arrival is Arrival.DUPLICATE
    r = j.add_label("a", 1300, False)
    assert (r.arrival, r.prediction, r.label, r.previous_label) == (Arrival.CORRECTED, "pa", False, True)
    assert j.add_prediction("a", 1000, "pa").arrival is Arrival.DUPLICATE
    assert (j.corrections, j.duplicates) == (1, 2)


def test_a_newer_label_replaces_an_older_one_still_waiting() -> None:
    j: LabelJoin[str] = LabelJoin(max_delay_ms=10_000, correction_ms=0)
    j.add_label("a", 1000, True)
    j.add_label("a", 1100, False)
    assert j.add_prediction("a", 900, "pa").label is False


def test_expiry_unlabeled_predictions_orphan_labels_and_joined_pairs() -> None:
    j: LabelJoin[str] = LabelJoin(max_delay_ms=1_000, correction_ms=2_000)
    j.add_prediction("old", 1_000, "p")
    j.add_prediction("new", 5_000, "p")
    j.add_label("orphan", 1_500, True)
    j.add_prediction("done", 3_000, "p")
    j.add_label("done", 3_100, True)
    j.expire(watermark=5_500)  # pending horizon 4500, joined horizon 2500
    assert j.pending == (1, 0) and j.joined == 1
    assert (j.expired_predictions, j.expired_labels) == (1, 1)
    j.expire(watermark=7_000)  # joined horizon 4000 > 3000: the correction window for 'done' is over
    assert j.joined == 0
    assert j.add_label("done", 7_000, False).arrival is Arrival.WAITING  # no longer correctable


@pytest.mark.parametrize("value,expected", [(True, True), (0, False), (1.0, True), ("yes", True), (" False ", False)])
def test_binary_truth(value: object, expected: bool) -> None:
    assert binary_truth(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["cat", 2, 0.5])
def test_binary_truth_rejects_other_values(value: object) -> None:
    with pytest.raises(ValueError, match="binary label"):
        binary_truth(value)  # type: ignore[arg-type]

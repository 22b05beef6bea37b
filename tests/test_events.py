import pytest

from mle_stream.core.events import Label, Prediction
from mle_stream.errors import InvalidEvent

BASE = dict(prediction_id="p", model="m", version="1", timestamp=1)


@pytest.mark.parametrize("extra,field", [
    ({}, "score"),
    ({"score": 0.5, "value": 1.0}, "value"),
    ({"score": 1.5}, "score"),
    ({"score": float("nan")}, "score"),
    ({"scores": {}}, "scores"),
    ({"value": 1.0, "latency_ms": -1.0}, "latency_ms"),
    ({"value": 1.0, "features": {"x": [1]}}, "features.x"),
    ({"value": 1.0, "segment": {"country": 1}}, "segment.country"),
])
def test_prediction_contract_names_the_field(extra: dict, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Prediction(**BASE, **extra)
    assert info.value.field == field


def test_serving_error_needs_no_output_and_bad_ids_are_named() -> None:
    assert Prediction(**BASE, error="timeout").error == "timeout"
    with pytest.raises(InvalidEvent, match="timestamp"):
        Prediction(**{**BASE, "timestamp": -5}, score=0.1)
    with pytest.raises(InvalidEvent, match="prediction_id"):
        Label(prediction_id="", model="m", timestamp=1, label=1)

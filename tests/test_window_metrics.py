from hypothesis import given, strategies as st
from sklearn.metrics import accuracy_score

from mle_stream.core.window_metrics import WindowMetrics

records = st.lists(
    st.tuples(st.one_of(st.none(), st.floats(0, 1e4)), st.booleans(), st.one_of(st.none(), st.booleans())),
    max_size=60,
)


def build(rows: list[tuple[float | None, bool, bool | None]]) -> WindowMetrics:
    m = WindowMetrics()
    for latency, serving_error, correct in rows:
        m.add_prediction(latency, serving_error)
        if correct is not None:
            m.add_outcome(correct)
    return m


@given(records, records, records)
def test_merge_laws(a, b, c) -> None:
    ma, mb, mc = build(a), build(b), build(c)
    assert ma.merge(mb).merge(mc).snapshot() == ma.merge(mb.merge(mc)).snapshot()
    assert ma.merge(mb).snapshot() == build(a + b).snapshot()


@given(records)
def test_snapshot_restore_round_trips(rows) -> None:
    m = build(rows)
    assert WindowMetrics.restore(m.snapshot()).snapshot() == m.snapshot()


@given(records)
def test_ratios_match_sklearn_and_counts(rows) -> None:
    m = build(rows)
    labeled = [c for _, _, c in rows if c is not None]
    if labeled:
        truth = accuracy_score([True] * len(labeled), labeled)
        assert abs(m.accuracy - truth) < 1e-12
        assert abs(m.error_rate - (1 - truth)) < 1e-12
        assert abs(m.label_coverage - len(labeled) / len(rows)) < 1e-12
    else:
        assert m.accuracy is None and m.error_rate is None
    if rows:
        assert m.serving_error_rate == sum(e for _, e, _ in rows) / len(rows)

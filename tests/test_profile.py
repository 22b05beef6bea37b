"""Reference profiles: the pure core (build_profile, ReferenceProfile) against numpy and Counter on
the raw rows, and the file readers of mle_stream.profiles."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mle_stream.core.drift import CategoricalSketch, NumericSketch, compare_numeric
from mle_stream.core.drift.profile import ALL_MISSING, EXCLUDED, NO_FINITE, ReferenceProfile, build_profile
from mle_stream.profiles import ProfileError, build_profile_from_file, read_columns, read_profile, write_profile


def _data(n: int = 5000, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.0, n)
    amount[rng.random(n) < 0.02] = np.nan
    country = rng.choice([f"c{i:02d}" for i in range(40)], size=n, p=np.arange(40, 0, -1) / 820.0).astype(object)
    country[rng.random(n) < 0.01] = None
    return {
        "amount": amount,
        "age": rng.integers(18, 30, n),  # integers: repeated values, duplicate quantiles
        "country": country,
        "is_new": rng.random(n) < 0.3,
        "score": rng.beta(2, 5, n),
        "label": rng.integers(0, 2, n),
        "txn_id": np.array([f"t{i}" for i in range(n)], dtype=object),
    }


def _check_numeric(sketch: NumericSketch, raw: np.ndarray, bins: int) -> None:
    x = np.asarray(raw, dtype=np.float64)
    finite = x[np.isfinite(x)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
    assert list(sketch.edges) == edges.tolist()
    # bins: underflow, [e_i, e_i+1) ..., overflow (searchsorted right); np.histogram on the same
    # edges closes the last bin, so the values equal to the last edge are the overflow bin here.
    hist, _ = np.histogram(finite, bins=edges)
    at_max = int((finite == edges[-1]).sum())
    expected = [int((finite < edges[0]).sum())] + hist.tolist() + [0]
    expected[-2] -= at_max
    expected[-1] += at_max
    assert sketch.counts.tolist() == expected
    assert sketch.nan_count == int(np.isnan(x).sum())
    assert sketch.count == x.size
    assert sketch.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert sketch.std == pytest.approx(finite.std(), rel=1e-9)
    assert (sketch.min, sketch.max) == (finite.min(), finite.max())


def test_numeric_features_equal_numpy_on_the_raw_rows() -> None:
    data = _data()
    profile = build_profile(data, model="fraud", version="3", exclude=["label", "txn_id"], bins=50)
    assert profile.rows == 5000 and (profile.model, profile.version, profile.bins) == ("fraud", "3", 50)
    assert profile.numeric_features == ["amount", "age"]
    assert profile.categorical_features == ["country", "is_new"]
    _check_numeric(profile.features["amount"], data["amount"], 50)  # type: ignore[arg-type]
    _check_numeric(profile.features["age"], data["age"], 50)  # type: ignore[arg-type]
    assert len(profile.features["age"].edges) < 51  # type: ignore[union-attr]  # duplicates removed
    assert profile.score is not None and "score" not in profile.features
    _check_numeric(profile.score, data["score"], 50)
    assert profile.skipped == {"label": EXCLUDED, "txn_id": EXCLUDED}


def test_categorical_features_equal_counter_top_k() -> None:
    data = _data()
    profile = build_profile(data, model="fraud", version="3", exclude=["label", "txn_id"], top_k=20)
    sketch = profile.features["country"]
    assert isinstance(sketch, CategoricalSketch)
    counter = Counter(v for v in data["country"].tolist() if v is not None)
    # Counter breaks ties by first appearance, the sketch by the text: compare on (-count, name).
    expected = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    assert list(sketch.categories) == [name for name, _ in expected]
    assert sketch.counts[:-1].tolist() == [count for _, count in expected]
    assert sketch.counts[-1] == sum(counter.values()) - sum(c for _, c in expected)  # "other"
    assert sketch.missing_count == sum(v is None for v in data["country"].tolist())
    flags = profile.features["is_new"]
    assert isinstance(flags, CategoricalSketch)
    assert dict(zip(flags.categories, flags.counts.tolist())) == {
        str(k): v for k, v in Counter(data["is_new"].tolist()).items()}


def test_json_round_trip_and_fresh_sketches() -> None:
    profile = build_profile(_data(), model="fraud", version=3, exclude=["label", "txn_id"],
                            created_at="2026-01-02T03:04:05Z")
    text = profile.to_json()
    data = json.loads(text)
    assert (data["kind"], data["v"], data["version"],
            data["created_at"]) == ("reference_profile", 1, "3", "2026-01-02T03:04:05Z")
    again = ReferenceProfile.from_json(text)
    assert again == profile and again.to_json() == text
    for name, reference in profile.features.items():
        fresh = again.feature(name)
        assert type(fresh) is type(reference) and fresh.count == 0
        assert getattr(fresh, "edges", None) == getattr(reference, "edges", None)
        assert getattr(fresh, "categories", None) == getattr(reference, "categories", None)
    live = profile.feature("amount")
    assert isinstance(live, NumericSketch)
    live.update(_data(seed=2)["amount"])
    assert compare_numeric(profile.features["amount"], live).psi < 0.1  # type: ignore[arg-type]  # same distribution
    score = profile.score_sketch()
    assert score is not None and score.edges == profile.score.edges and score.count == 0  # type: ignore[union-attr]
    with pytest.raises(KeyError, match="no feature 'label' \\(excluded\\)"):
        profile.feature("label")


def test_bad_profile_json_is_refused() -> None:
    profile = build_profile({"x": [1.0, 2.0, 3.0]}, model="m", version="1")
    data = json.loads(profile.to_json())
    with pytest.raises(ValueError, match="not a reference_profile"):
        ReferenceProfile.restore({**data, "kind": "other"})
    with pytest.raises(ValueError, match="format v2 is not supported"):
        ReferenceProfile.restore({**data, "v": 2})
    with pytest.raises(ValueError, match="missing field 'rows'"):
        ReferenceProfile.restore({k: v for k, v in data.items() if k != "rows"})
    broken = json.loads(profile.to_json())
    broken["features"]["x"]["counts"] = [1]
    with pytest.raises(ValueError, match="feature 'x'"):
        ReferenceProfile.restore(broken)
    with pytest.raises(ValueError, match="not JSON"):
        ReferenceProfile.from_json("{")


def test_column_kinds_missing_columns_and_errors() -> None:
    profile = build_profile({
        "ints_with_none": [1, None, 3, 4],        # list of numbers with None -> numeric, None = NaN
        "mixed": [1, "a", None, 2.5],              # mixed -> categorical by text
        "bools": [True, False, None, True],
        "empty": [None, None, None, None],
        "nan": np.full(4, np.nan),
        "inf": np.array([np.inf, -np.inf, np.nan, np.inf]),
    }, model="m", version="1", score_column=None)
    assert isinstance(profile.features["ints_with_none"], NumericSketch)
    assert profile.features["ints_with_none"].nan_count == 1
    assert isinstance(profile.features["mixed"], CategoricalSketch)
    assert set(profile.features["mixed"].categories) == {"1", "a", "2.5"}
    assert set(profile.features["bools"].categories) == {"True", "False"}  # type: ignore[union-attr]
    assert profile.skipped == {"empty": ALL_MISSING, "nan": ALL_MISSING, "inf": NO_FINITE}
    assert profile.score is None

    with pytest.raises(ValueError, match="excluded column\\(s\\) 'lable' not in the data"):
        build_profile({"x": [1.0]}, model="m", version="1", exclude=["lable"])
    with pytest.raises(ValueError, match="different lengths"):
        build_profile({"x": [1.0, 2.0], "y": [1.0]}, model="m", version="1")
    with pytest.raises(ValueError, match="no rows"):
        build_profile({"x": []}, model="m", version="1")
    with pytest.raises(ValueError, match="score column 'score' is not numeric"):
        build_profile({"score": ["high", "low"]}, model="m", version="1")
    with pytest.raises(ValueError, match="dtype datetime64"):
        build_profile({"t": np.array(["2026-01-01"], dtype="datetime64[D]")}, model="m", version="1")


# --- readers -----------------------------------------------------------------------------------

def test_csv_reader_types_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("amount,country,score,label\n1.5,fr,0.1,1\n,de,0.2,0\n3,\"d,e\",nan,1\n\n4e2,,0.4,0\n")
    columns = read_columns(path)
    np.testing.assert_array_equal(columns["amount"], [1.5, np.nan, 3.0, 400.0])
    assert columns["country"].tolist() == ["fr", "de", "d,e", None]
    assert columns["score"].dtype == np.float64 and np.isnan(columns["score"][2])
    profile = build_profile_from_file(path, model="m", version="1", exclude=["label"], bins=4)
    assert profile.rows == 4 and profile.features["country"].missing_count == 1  # type: ignore[union-attr]


def test_jsonl_reader_takes_the_union_of_keys(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1, "b": "x"}\n\n{"a": 2.5, "c": true}\n{"b": null, "a": null}\n')
    columns = read_columns(path)
    np.testing.assert_array_equal(columns["a"], [1.0, 2.5, np.nan])
    assert columns["b"].tolist() == ["x", None, None]
    assert columns["c"].tolist() == [None, True, None]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("empty.csv", "", "empty.csv: empty file"),
    ("header.csv", "a,b\n", "header.csv: no data rows after the header"),
    ("ragged.csv", "a,b\n1,2\n3\n", "ragged.csv:3: row has 1 fields, the header (line 1) has 2"),
    ("dup.csv", "a,a\n1,2\n", "dup.csv:1: column 2: duplicate column name 'a'"),
    ("noname.csv", "a,\n1,2\n", "noname.csv:1: column 2 of the header has no name"),
    ("empty.jsonl", "\n\n", "empty.jsonl: empty file"),
    ("bad.jsonl", '{"a": 1}\n{"a": 2,, }\n', "bad.jsonl:2:9: not JSON"),
    ("list.jsonl", '[1, 2]\n', "list.jsonl:1: expected a JSON object, got list"),
    ("nested.jsonl", '{"a": 1}\n{"a": {"b": 1}}\n', "nested.jsonl:2: column 'a' holds a dict"),
    ("data.txt", "a\n1\n", "data.txt: unknown data format '.txt'"),
])
def test_bad_input_names_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        read_columns(path)
    assert str(info.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(info.value)


def test_build_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ProfileError, match=f"{path}: excluded column\\(s\\) 'c' not in the data"):
        build_profile_from_file(path, model="m", version="1", exclude=["c"])
    with pytest.raises(ProfileError, match="no such file"):
        read_columns(tmp_path / "missing.csv")


def test_parquet_reader(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    table = pa.table({
        "amount": pa.array([1.5, None, 3.0], type=pa.float64()),
        "age": pa.array([20, 30, None], type=pa.int32()),
        "country": pa.array(["fr", None, "de"]).dictionary_encode(),
        "flag": pa.array([True, False, None]),
        "ts": pa.array([1, 2, 3], type=pa.timestamp("s")),
    })
    pq.write_table(table, path)
    with pytest.raises(ProfileError, match=f"{path}: column 'ts' has type timestamp.*--exclude ts"):
        read_columns(path)
    columns = read_columns(path, exclude=["ts"])
    np.testing.assert_array_equal(columns["amount"], [1.5, np.nan, 3.0])
    np.testing.assert_array_equal(columns["age"], [20.0, 30.0, np.nan])
    assert columns["country"].tolist() == ["fr", None, "de"]
    assert columns["flag"].tolist() == [True, False, None]
    profile = build_profile_from_file(path, model="m", version="1", exclude=["ts"])
    assert profile.numeric_features == ["amount", "age"] and profile.categorical_features == ["country", "flag"]

    # the same rows as csv and as parquet give the same profile
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("amount,age,country,flag,ts\n1.5,20,fr,True,1\n,30,,False,2\n3.0,,de,,3\n")
    from_csv = build_profile_from_file(csv_path, model="m", version="1", exclude=["ts"])
    from_csv.created_at = profile.created_at
    assert from_csv == profile

    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ProfileError, match=f"{bad}: not a readable parquet file"):
        read_columns(bad)


def test_profile_file_round_trip(tmp_path: Path) -> None:
    profile = build_profile(_data(500), model="m", version="2", exclude=["label", "txn_id"])
    write_profile(profile, tmp_path / "ref.json")
    assert read_profile(tmp_path / "ref.json") == profile
    (tmp_path / "bad.json").write_text('{"kind": "x"}')
    with pytest.raises(ProfileError, match="bad.json: not a reference_profile"):
        read_profile(tmp_path / "bad.json")

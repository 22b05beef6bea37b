"""`mle-stream bench drift`, the parts that can be checked without Evidently.

CI has no Evidently (it lives only in the bench-only venv of benchmarks/bench-drift-env), so the real
comparison is left to the bench itself. Here: our side's values against numpy/scipy on the raw
arrays with the same bins, the report's fields (with a stand-in for the Evidently side that
speaks the same protocol), and the errors users see.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mle_stream.bench.drift import (
    BINS,
    comparison_values,
    make_frames,
    our_drift_table,
    run_drift_bench,
    run_evidently,
)
from mle_stream.cli import main, parse_args
from mle_stream.core.drift import quantile_edges
from mle_stream.errors import MleStreamError

ROWS, REFERENCE_ROWS = 20_000, 5_000


@pytest.fixture(scope="module")
def frames() -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    return make_frames(ROWS, REFERENCE_ROWS, 10, seed=3)


def _evidently_zero_rule(shares: np.ndarray) -> np.ndarray:
    # Written out again from Evidently's get_binned_data (legacy/calculations/stattests/utils.py),
    # independently of the bench's own copy.
    smallest = shares[shares != 0].min()
    return np.where(shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, shares)


def test_psi_on_evidently_bins_equals_numpy_histogram_psi(frames) -> None:
    names, _, reference, current = frames
    seen_empty = 0
    for j in range(len(names)):
        r, c = reference[:, j], current[:, j]
        edges = np.histogram_bin_edges(np.concatenate([r, c]), bins="sturges")
        p, q = np.histogram(r, edges)[0] / r.size, np.histogram(c, edges)[0] / c.size
        seen_empty += int((p == 0).sum() + (q == 0).sum())
        pe, qe = _evidently_zero_rule(p), _evidently_zero_rule(q)
        hand_evidently = float(((pe - qe) * np.log(pe / qe)).sum())
        # Our psi(): a fixed 1e-4 for an empty share (the sketch's two end bins are empty on both
        # sides and add 0).
        p4, q4 = np.where(p == 0, 1e-4, p), np.where(q == 0, 1e-4, q)
        hand_fixed = float(((q4 - p4) * np.log(q4 / p4)).sum())

        ours = comparison_values(r, c)
        assert ours["psi_bins"] == edges.size - 1
        assert ours["psi"] == pytest.approx(hand_evidently, rel=1e-12, abs=1e-15)
        assert ours["psi_eps_1e-4"] == pytest.approx(hand_fixed, rel=1e-12, abs=1e-15)
    assert seen_empty > 0  # the equal-width tails do leave bins empty: the zero rule is exercised


def test_wasserstein_of_the_comparison_and_of_the_table_against_scipy(frames) -> None:
    names, _, reference, current = frames
    table = our_drift_table(names, reference, current)
    for j, name in enumerate(names):
        r, c = reference[:, j], current[:, j]
        exact = stats.wasserstein_distance(r, c) / np.std(r)  # Evidently's normed Wasserstein
        row = table[name]
        assert row.wasserstein is not None and row.wasserstein_error_bound is not None
        # The table's 100-bin estimate stays within its guaranteed bound...
        assert abs(row.wasserstein - exact) <= row.wasserstein_error_bound
        # ...and, like the 1000-bin comparison value, far closer than that (measured ~1e-4 std).
        assert abs(row.wasserstein - exact) < 2e-3
        assert abs(comparison_values(r, c)["wasserstein"] - exact) < 2e-3


def test_table_psi_equals_numpy_histogram_on_the_reference_quantile_bins(frames) -> None:
    names, _, reference, current = frames
    table = our_drift_table(names, reference, current)
    for j, name in enumerate(names):
        r, c = reference[:, j], current[:, j]
        inner = np.asarray(quantile_edges(r, BINS))
        # The sketch's bins: x < e_0, [e_k-1, e_k), x >= e_K-1; as np.histogram bins with outer
        # edges beyond every value (np.histogram's closed last bin then changes nothing).
        lo, hi = min(r.min(), c.min()) - 1.0, max(r.max(), c.max()) + 1.0
        edges = np.concatenate([[lo], inner, [hi]])
        p, q = np.histogram(r, edges)[0] / r.size, np.histogram(c, edges)[0] / c.size
        p, q = np.where(p == 0, 1e-4, p), np.where(q == 0, 1e-4, q)
        assert table[name].psi == pytest.approx(float(((q - p) * np.log(q / p)).sum()), rel=1e-12, abs=1e-15)
    # The shifted columns are flagged, the unshifted ones are not (FEATURE_SPECS).
    assert [n for n in names if table[n].drifted] == ["f5", "f6", "f7", "f8", "f9"]


STAND_IN = textwrap.dedent('''
    # NOT Evidently: a stand-in speaking drift_evidently.py's protocol, with Evidently's PSI
    # (Sturges edges, its zero rule) and normed Wasserstein written out with numpy and scipy.
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from scipy import stats
    data = Path(sys.argv[1])
    columns = json.loads((data / "columns.json").read_text())
    ref, cur = np.load(data / "reference.npy"), np.load(data / "current.npy")
    def zero_rule(s):
        m = s[s != 0].min()
        return np.where(s == 0, m / 1e6 if m <= 1e-4 else 1e-4, s)
    start = time.perf_counter()
    values = {"psi": {}, "wasserstein": {}}
    for j, name in enumerate(columns):
        r, c = ref[:, j], cur[:, j]
        edges = np.histogram_bin_edges(np.concatenate([r, c]), bins="sturges")
        p = zero_rule(np.histogram(r, edges)[0] / r.size)
        q = zero_rule(np.histogram(c, edges)[0] / c.size)
        values["psi"][name] = float(((p - q) * np.log(p / q)).sum())
        values["wasserstein"][name] = float(stats.wasserstein_distance(r, c) / max(np.std(r), 0.001))
    seconds = time.perf_counter() - start
    default = {n: {"method": "Wasserstein distance (normed)", "value": v} for n, v in values["wasserstein"].items()}
    print(json.dumps({"versions": {"evidently": "stand-in", "pandas": "-", "numpy": np.__version__, "scipy": "-",
                                   "python": "-"},
                      "forced": {"seconds": seconds, "values": values},
                      "default": {"seconds": seconds, "values": default}, "peak_rss_mb": 1.0}))
''')


def test_report_fields_with_a_stand_in_for_the_evidently_side(tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    r = run_drift_bench(rows=ROWS, reference_rows=REFERENCE_ROWS, features=10,
                        evidently_python=Path(sys.executable), evidently_script=script)
    json.loads(json.dumps(r))  # JSON-ready

    assert {"seconds", "evidently_seconds", "speedup", "max_relative_difference", "evidently_default_seconds",
            "speedup_vs_default", "rows", "reference_rows", "features", "statistics", "versions", "per_feature",
            "timed"} <= r.keys()
    assert (r["rows"], r["reference_rows"], r["features"]) == (ROWS, REFERENCE_ROWS, 10)
    assert r["seconds"] > 0 and r["speedup"] == r["evidently_seconds"] / r["seconds"]
    assert {"evidently", "pandas", "numpy"} <= r["versions"]["evidently_env"].keys()
    assert set(r["statistics"]) == {"psi", "psi_eps_1e-4", "wasserstein", "wasserstein_100_bins"}
    assert r["max_relative_difference"] == max(r["statistics"]["psi"]["max_relative_difference"],
                                               r["statistics"]["wasserstein"]["max_relative_difference"])
    # Against a faithful copy of Evidently's formulas the same statistic agrees: PSI to rounding,
    # Wasserstein to the binning error of the estimate.
    assert r["statistics"]["psi"]["max_relative_difference"] < 1e-9
    assert r["statistics"]["wasserstein"]["max_absolute_difference"] < 2e-3
    # f4's 0.1 std shift sits on the 0.1 threshold: drifted or not depends on the sample.
    assert len(r["per_feature"]) == 10 and {"f5", "f6", "f7", "f8",
                                            "f9"} <= set(r["drifted"]) <= {"f4", "f5", "f6", "f7", "f8", "f9"}


def test_a_failing_evidently_side_is_reported_with_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import sys\nprint('ImportError: no module evidently.presets', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(MleStreamError, match=r"exit code 3:\nImportError: no module evidently.presets"):
        run_evidently(Path(sys.executable), tmp_path, script)


def test_missing_evidently_python_says_how_to_create_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert main(["bench", "drift", "--json", "--evidently-python", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"no Evidently python at {missing}" in err
    assert "benchmarks/bench-drift-env" in err and "--evidently-python" in err


def test_bench_defaults_to_the_worker_and_refuses_options_of_the_other_bench(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["bench", "--events", "5"]).mode == "worker"
    assert parse_args(["--log-level", "debug", "bench"]).mode == "worker"
    assert parse_args(["bench", "drift", "--rows", "5"]).mode == "drift"
    # Each mode's parser knows only its own flags: argparse refuses the others' (exit status 2).
    for argv, flag in ((["bench", "--rows", "10"], "--rows"), (["bench", "drift", "--events", "10"], "--events"),
                       (["bench", "memory", "--profile", "p"], "--profile")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_frames_are_deterministic_and_checked() -> None:
    a, b = make_frames(1000, 500, 12, seed=7), make_frames(1000, 500, 12, seed=7)
    assert a[0] == b[0] and np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
    assert a[2].shape == (500, 12) and a[3].shape == (1000, 12) and a[3].flags.f_contiguous
    with pytest.raises(MleStreamError, match="--reference-rows must be an integer >= 1"):
        make_frames(10, 0, 1)

"""`mle-stream bench drift`: our drift table next to Evidently's data drift preset, same frames, same run.

What is generated: `features` numeric columns (seeded, deterministic), a reference of
`reference_rows` rows and a current window of `rows` rows; some columns unshifted, some with a
mean shift of 0.1-0.5 std, a scale change, a shape change of a skewed column and a shift of a
heavy-tailed one (`FEATURE_SPECS`, cycled when more than 10 features are asked for). The frames are
written once as .npy files into a temporary directory and both sides read those same files.

What is timed (file reading and frame building excluded on both sides):

- ours: `build_profile` of the reference (100 quantile bins per feature: edges, counts, bin sums,
  moments), one sketch per feature (`profile.feature(name)`) filled with the current rows, and
  `decide_drift` over all features (PSI, Jensen-Shannon, normed Wasserstein with its bound, KS
  bounds and p-value, Benjamini-Hochberg, the decision), from numpy columns in memory;
- Evidently: `Report([DataDriftPreset(method="psi"), DataDriftPreset(method="wasserstein")]).run()`
  on pandas DataFrames in memory, in a subprocess running the bench-only venv's python
  (`drift_evidently.py`); so every column gets both statistics. Its default preset
  (`DataDriftPreset()`: normed Wasserstein only, above 1000 rows) is timed too and reported apart.

How the values are compared (after the clock, untimed), so that both sides compute the same
statistic:

- PSI. Evidently bins numeric columns (more than 20 distinct values) on equal-width edges over the
  reference and current values together, `np.histogram_bin_edges(concat, bins="sturges")` (22
  bins at 1.1M rows; not reference quantiles, whatever its docstring says), and replaces a share
  of 0 on each side by min(that side's nonzero shares) / 1e6 when that minimum is <= 1e-4, else by
  1e-4 (evidently/legacy/calculations/stattests/utils.py, get_binned_data). The bench fills our
  NumericSketch with exactly those edges (the last one moved up by one ulp: np.histogram's last
  bin is closed, our sketch puts x >= the last edge in its overflow bin) and computes PSI from the
  sketch's counts with Evidently's zero rule: that is "psi". Our shipped `psi()` replaces an
  empty share by a fixed 1e-4 instead; on bins that are empty on one side (the equal-width tails
  of a shifted or scaled column) that is a different number, reported apart as "psi_eps_1e-4".
- Normed Wasserstein. Evidently: scipy.stats.wasserstein_distance on the raw values / max(np.std
  of the reference, 0.001). Ours is read from binned sums. "wasserstein_100_bins" is the value of
  the timed table (100 reference-quantile bins, what the worker uses); "wasserstein" is the same
  estimator on 1000 reference-quantile bins: on unshifted columns the distance itself is only
  ~0.005 (sampling noise), and the 100-bin estimate's absolute error (~1e-4 std) is then up to
  ~2% of it, while on 1000 bins it stays well under 1%.

`max_relative_difference` = the largest |ours - Evidently| / |Evidently| over "psi" and
"wasserstein" and all columns.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy

from mle_stream.core.drift import FeatureDrift, NumericSketch, decide_drift, psi, quantile_edges, wasserstein_normed
from mle_stream.core.drift.profile import build_profile
from mle_stream.errors import MleStreamError

FloatArray = npt.NDArray[np.float64]

DEFAULT_ROWS, DEFAULT_REFERENCE_ROWS, DEFAULT_FEATURES = 1_000_000, 100_000, 10
BINS = 100  # the profile's default: what the worker compares windows on
COMPARISON_BINS = 1000  # reference-quantile bins for the Wasserstein comparison (module doc)
TARGET_SPEEDUP, TARGET_RELATIVE_DIFFERENCE = 50.0, 0.01
EVIDENTLY_SCRIPT = Path(__file__).with_name("drift_evidently.py")
ENV_SCRIPT = "benchmarks/bench-drift-env"

TIMED = ("ours: build_profile of the reference (100 quantile bins per feature) + one sketch per feature filled "
         "with the current rows + decide_drift (PSI, Jensen-Shannon, normed Wasserstein, KS, Benjamini-Hochberg, "
         "decision), from numpy columns in memory; Evidently: Report.run() of DataDriftPreset(method='psi') + "
         "DataDriftPreset(method='wasserstein') on pandas DataFrames in memory. Both exclude reading the .npy "
         "files and building the frames.")

Generator = Callable[[np.random.Generator, int], FloatArray]


def _normal(shift: float = 0.0, scale: float = 1.0) -> Generator:
    return lambda rng, n: rng.standard_normal(n) * scale + shift


def _lognormal(sigma: float) -> Generator:
    return lambda rng, n: rng.lognormal(0.0, sigma, n)


def _student_t(shift: float) -> Generator:
    return lambda rng, n: rng.standard_t(3, n) + shift


# (label, reference generator, current generator), cycled over the features.
FEATURE_SPECS: list[tuple[str, Generator, Generator]] = [
    ("normal, unshifted", _normal(), _normal()),
    ("normal, unshifted", _normal(), _normal()),
    ("normal, unshifted", _normal(), _normal()),
    ("lognormal(0, 0.5), unshifted", _lognormal(0.5), _lognormal(0.5)),
    ("normal, mean +0.1 std", _normal(), _normal(0.1)),
    ("normal, mean +0.25 std", _normal(), _normal(0.25)),
    ("normal, mean +0.5 std", _normal(), _normal(0.5)),
    ("normal, std x1.5", _normal(), _normal(scale=1.5)),
    ("lognormal, sigma 0.5 -> 0.6", _lognormal(0.5), _lognormal(0.6)),
    ("t(3), +0.2", _student_t(0.0), _student_t(0.2)),
]


def default_evidently_python() -> Path:
    """Where benchmarks/bench-drift-env puts the venv by default (outside the checkout, so that no
    .gitignore entry is needed and `git clean` does not remove it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mle-stream" / "bench-drift-evidently" / "bin" / "python"


def make_frames(rows: int, reference_rows: int, features: int, seed: int = 0
                ) -> tuple[list[str], list[str], FloatArray, FloatArray]:
    """(names, labels, reference, current): float64 arrays of rows x features in Fortran order, so
    that a column is contiguous for our sketches. Same seed, same frames."""
    for name, value in (("rows", rows), ("reference_rows", reference_rows), ("features", features)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MleStreamError(f"bench drift: --{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    rng = np.random.default_rng(seed)
    names = [f"f{j}" for j in range(features)]
    labels = []
    reference = np.empty((reference_rows, features), dtype=np.float64, order="F")
    current = np.empty((rows, features), dtype=np.float64, order="F")
    for j in range(features):
        label, make_reference, make_current = FEATURE_SPECS[j % len(FEATURE_SPECS)]
        labels.append(label)
        reference[:, j] = make_reference(rng, reference_rows)
        current[:, j] = make_current(rng, rows)
    return names, labels, reference, current


def write_frames(directory: Path, names: Sequence[str], reference: FloatArray, current: FloatArray) -> None:
    np.save(directory / "reference.npy", reference)
    np.save(directory / "current.npy", current)
    (directory / "columns.json").write_text(json.dumps(list(names)))


def read_frames(directory: Path) -> tuple[list[str], FloatArray, FloatArray]:
    names = json.loads((directory / "columns.json").read_text())
    return names, np.load(directory / "reference.npy"), np.load(directory / "current.npy")


def our_drift_table(names: Sequence[str], reference: FloatArray, current: FloatArray,
                    bins: int = BINS) -> dict[str, FeatureDrift]:
    """The timed computation: the reference profile, one filled sketch per feature, decide_drift."""
    profile = build_profile({name: reference[:, j] for j, name in enumerate(names)}, model="bench", version="1",
                            score_column=None, bins=bins, created_at="bench")
    pairs: dict[str, tuple[NumericSketch, NumericSketch]] = {}
    for j, name in enumerate(names):
        window = profile.feature(name)
        assert isinstance(window, NumericSketch)  # every generated column is numeric
        window.update(current[:, j])
        ref_sketch = profile.features[name]
        assert isinstance(ref_sketch, NumericSketch)
        pairs[name] = (ref_sketch, window)
    return decide_drift(pairs)


def evidently_edges(reference: FloatArray, current: FloatArray) -> FloatArray:
    """The bin edges Evidently's PSI uses for a numeric column with more than 20 distinct values:
    equal-width Sturges bins over the reference and current values together."""
    distinct = np.unique(reference).size
    if distinct <= 20:  # Evidently then counts values, not bins: a different statistic
        raise MleStreamError(f"bench drift: a reference column has {distinct} distinct values; Evidently's PSI "
                             f"bins only columns with more than 20")
    return np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")


def sketch_on_edges(edges: FloatArray, values: FloatArray) -> NumericSketch:
    """A NumericSketch with np.histogram's bins for these edges: the last edge is moved up by one
    ulp, since np.histogram's last bin is closed and our sketch's overflow bin starts at the last
    edge. Underflow and overflow then stay empty for values within [edges[0], edges[-1]]."""
    shifted = np.asarray(edges, dtype=np.float64).copy()
    shifted[-1] = np.nextafter(shifted[-1], math.inf)
    sketch = NumericSketch(shifted.tolist())
    sketch.update(values)
    return sketch


def psi_evidently_zero_rule(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> float:
    """PSI of two count vectors with Evidently's handling of empty shares: on each side a share of
    0 becomes min(nonzero shares) / 1e6 if that minimum is <= 1e-4, else 1e-4."""
    def shares(counts: npt.ArrayLike) -> FloatArray:
        c = np.asarray(counts, dtype=np.float64)
        s = c / c.sum()
        smallest = float(s[s > 0].min())
        return np.where(s == 0, smallest / 1e6 if smallest <= 1e-4 else 1e-4, s)
    p, q = shares(reference_counts), shares(current_counts)
    return float(((p - q) * np.log(p / q)).sum())


def comparison_values(reference: FloatArray, current: FloatArray,
                      comparison_bins: int = COMPARISON_BINS) -> dict[str, float | None]:
    """Our statistics of one column computed the way Evidently computes them (module doc), untimed:
    psi (Evidently's edges and zero rule), psi_eps_1e-4 (Evidently's edges, our psi()), wasserstein
    (our estimator on `comparison_bins` reference-quantile bins) and the edges' count."""
    edges = evidently_edges(reference, current)
    ref_sketch, cur_sketch = sketch_on_edges(edges, reference), sketch_on_edges(edges, current)
    ref_counts, cur_counts = ref_sketch.counts, cur_sketch.counts
    if ref_counts[0] or ref_counts[-1] or cur_counts[0] or cur_counts[-1]:
        raise AssertionError("values outside Evidently's edges: the edges span every value by construction")
    fine = quantile_edges(reference, comparison_bins)
    ref_fine, cur_fine = NumericSketch(fine), NumericSketch(fine)
    ref_fine.update(reference)
    cur_fine.update(current)
    w = wasserstein_normed(ref_fine, cur_fine)
    return {
        "psi": psi_evidently_zero_rule(ref_counts[1:-1], cur_counts[1:-1]),
        "psi_eps_1e-4": psi(ref_sketch, cur_sketch),
        "wasserstein": None if w is None else w.value,
        "psi_bins": float(edges.size - 1),
        "psi_empty_reference_bins": float(int((ref_counts[1:-1] == 0).sum())),
        "psi_empty_current_bins": float(int((cur_counts[1:-1] == 0).sum())),
    }


def relative_difference(ours: float | None, theirs: float | None) -> float:
    """|ours - theirs| / |theirs|; 0 when both are 0, inf when only theirs is 0 or one is missing."""
    if ours is None or theirs is None:
        return math.inf
    if theirs == 0.0:
        return 0.0 if ours == 0.0 else math.inf
    return abs(ours - theirs) / abs(theirs)


def run_evidently(python: Path, data_dir: Path, script: Path = EVIDENTLY_SCRIPT) -> dict[str, Any]:
    """Run the Evidently side in its own venv on the frames in data_dir; its JSON report."""
    check_evidently_python(python)
    env = {**os.environ, "DO_NOT_TRACK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # the venv's own packages, not ours
    done = subprocess.run([str(python), str(script), str(data_dir)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise MleStreamError(f"bench drift: the Evidently side ({python} {script.name}) failed with exit code "
                             f"{done.returncode}:\n{tail}\nIf the venv is broken, recreate it with {ENV_SCRIPT}")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise MleStreamError(f"bench drift: the Evidently side ({python}) printed no JSON report; stdout was "
                             f"{done.stdout[-500:]!r}") from None
    return result


def check_evidently_python(python: Path) -> None:
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise MleStreamError(
            f"bench drift: no Evidently python at {python}. Evidently runs in a bench-only venv, never in "
            f"mle-stream's own environment: create it with `{ENV_SCRIPT}` from a checkout of mle-stream "
            f"(about a minute, installs evidently 0.7.23, pandas 2.3.3, numpy 2.3.5 from PyPI into "
            f"{default_evidently_python().parent.parent}), or `{ENV_SCRIPT} DIR` and pass "
            f"--evidently-python DIR/bin/python")


def run_drift_bench(rows: int = DEFAULT_ROWS, reference_rows: int = DEFAULT_REFERENCE_ROWS,
                    features: int = DEFAULT_FEATURES, evidently_python: Path | None = None, seed: int = 0,
                    evidently_script: Path = EVIDENTLY_SCRIPT) -> dict[str, Any]:
    """The whole bench; the report as a JSON-ready dict (see format_drift_report for the fields)."""
    python = evidently_python or default_evidently_python()
    check_evidently_python(python)  # before minutes of work, not after
    names, labels, generated_reference, generated_current = make_frames(rows, reference_rows, features, seed)
    with tempfile.TemporaryDirectory(prefix="mle-bench-drift-") as tmp:
        data_dir = Path(tmp)
        write_frames(data_dir, names, generated_reference, generated_current)
        del generated_reference, generated_current
        _, reference, current = read_frames(data_dir)  # what both sides read: the same files

        start = time.perf_counter()
        table = our_drift_table(names, reference, current)
        seconds = time.perf_counter() - start

        ours = {name: comparison_values(reference[:, j], current[:, j]) for j, name in enumerate(names)}
        theirs = run_evidently(python, data_dir, evidently_script)

    forced = theirs["forced"]["values"]
    default = theirs["default"]["values"]
    per_feature: list[dict[str, Any]] = []
    for name, label in zip(names, labels):
        row = table[name]
        mine = ours[name]
        evidently = {"psi": forced.get("psi", {}).get(name), "wasserstein": forced.get("wasserstein", {}).get(name)}
        per_feature.append({
            "feature": name, "data": label, "drifted": row.drifted, "reason": row.reason,
            "psi_100_bins": row.psi, "wasserstein_100_bins": row.wasserstein,
            "wasserstein_error_bound": row.wasserstein_error_bound, "ks_statistic": row.ks_statistic,
            "p_value_adjusted": row.p_value_adjusted,
            "psi": mine["psi"], "psi_eps_1e-4": mine["psi_eps_1e-4"], "wasserstein": mine["wasserstein"],
            "psi_bins": int(mine["psi_bins"] or 0),
            "psi_empty_bins": {"reference": int(mine["psi_empty_reference_bins"] or 0),
                               "current": int(mine["psi_empty_current_bins"] or 0)},
            "evidently_psi": evidently["psi"], "evidently_wasserstein": evidently["wasserstein"],
            "evidently_default": default.get(name),
            "relative_difference": {
                "psi": relative_difference(mine["psi"], evidently["psi"]),
                "psi_eps_1e-4": relative_difference(mine["psi_eps_1e-4"], evidently["psi"]),
                "wasserstein": relative_difference(mine["wasserstein"], evidently["wasserstein"]),
                "wasserstein_100_bins": relative_difference(row.wasserstein, evidently["wasserstein"]),
            },
            "absolute_difference": {
                "psi": _abs_difference(mine["psi"], evidently["psi"]),
                "psi_eps_1e-4": _abs_difference(mine["psi_eps_1e-4"], evidently["psi"]),
                "wasserstein": _abs_difference(mine["wasserstein"], evidently["wasserstein"]),
                "wasserstein_100_bins": _abs_difference(row.wasserstein, evidently["wasserstein"]),
            },
        })

    statistics = {
        stat: {"max_relative_difference": max(f["relative_difference"][stat] for f in per_feature),
               "max_absolute_difference": max(f["absolute_difference"][stat] for f in per_feature),
               "worst_feature": max(per_feature, key=lambda f: f["relative_difference"][stat])["feature"]}
        for stat in ("psi", "psi_eps_1e-4", "wasserstein", "wasserstein_100_bins")
    }
    evidently_seconds = float(theirs["forced"]["seconds"])
    evidently_default_seconds = float(theirs["default"]["seconds"])
    max_rel = max(statistics["psi"]["max_relative_difference"], statistics["wasserstein"]["max_relative_difference"])
    return {
        "seconds": seconds,
        "evidently_seconds": evidently_seconds,
        "speedup": evidently_seconds / seconds,
        "max_relative_difference": max_rel,
        "evidently_default_seconds": evidently_default_seconds,
        "speedup_vs_default": evidently_default_seconds / seconds,
        "targets": {"speedup": TARGET_SPEEDUP, "max_relative_difference": TARGET_RELATIVE_DIFFERENCE,
                    "speedup_met": evidently_seconds / seconds >= TARGET_SPEEDUP,
                    "max_relative_difference_met": max_rel <= TARGET_RELATIVE_DIFFERENCE},
        "rows": rows, "reference_rows": reference_rows, "features": features, "seed": seed,
        "bins": BINS, "comparison_bins": COMPARISON_BINS,
        "timed": TIMED,
        "statistics": statistics,
        "drifted": [f["feature"] for f in per_feature if f["drifted"]],
        "per_feature": per_feature,
        "versions": {"evidently_env": theirs["versions"],
                     "ours": {"numpy": np.__version__, "scipy": scipy.__version__,
                              "python": platform.python_version()}},
        "evidently_peak_rss_mb": theirs.get("peak_rss_mb"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def _abs_difference(ours: float | None, theirs: float | None) -> float:
    return math.inf if ours is None or theirs is None else abs(ours - theirs)


def _num(value: float | None, digits: int = 5) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "inf" if math.isinf(value) else f"{100 * value:.3f}%"


def format_drift_report(r: Mapping[str, Any]) -> str:
    v = r["versions"]["evidently_env"]
    lines = [
        f"drift bench: {r['features']} numeric features, reference {r['reference_rows']:,} rows, "
        f"current {r['rows']:,} rows (seed {r['seed']})",
        f"  ours       {r['seconds']:8.3f} s   profile + sketches + decide_drift (100 quantile bins)",
        f"  Evidently  {r['evidently_seconds']:8.3f} s   DataDriftPreset psi + wasserstein (evidently "
        f"{v['evidently']}, pandas {v['pandas']}, numpy {v['numpy']}), peak RSS {r['evidently_peak_rss_mb']:.0f} MB",
        f"  Evidently  {r['evidently_default_seconds']:8.3f} s   default DataDriftPreset()",
        f"  speedup    {r['speedup']:8.1f} x   (target >= {r['targets']['speedup']:g}; vs the default preset "
        f"{r['speedup_vs_default']:.1f} x)",
        f"  max relative difference {_pct(r['max_relative_difference'])} (target <= "
        f"{_pct(r['targets']['max_relative_difference'])}) over psi and wasserstein below",
        "",
        f"{'feature':<8}{'data':<30}{'drift':<6}{'psi':>10}{'ev psi':>10}{'rel':>9}{'psi 1e-4':>10}"
        f"{'W 1000':>10}{'W 100':>10}{'ev W':>10}{'rel 1000':>10}{'rel 100':>10}",
    ]
    for f in r["per_feature"]:
        rel = f["relative_difference"]
        lines.append(
            f"{f['feature']:<8}{f['data'][:29]:<30}{('yes' if f['drifted'] else 'no'):<6}{_num(f['psi']):>10}"
            f"{_num(f['evidently_psi']):>10}{_pct(rel['psi']):>9}{_num(f['psi_eps_1e-4']):>10}"
            f"{_num(f['wasserstein']):>10}{_num(f['wasserstein_100_bins']):>10}{_num(f['evidently_wasserstein']):>10}"
            f"{_pct(rel['wasserstein']):>10}{_pct(rel['wasserstein_100_bins']):>10}")
    lines += ["", "max relative (absolute) difference per statistic:"]
    for stat, s in r["statistics"].items():
        lines.append(f"  {stat:<22}{_pct(s['max_relative_difference']):>10} ({s['max_absolute_difference']:.2e}) "
                     f"at {s['worst_feature']}")
    lines += ["", "psi: Evidently's Sturges edges and its empty-share rule; psi 1e-4: same edges, our psi() "
                  "(empty share = 1e-4);",
              "W 1000 / W 100: our normed Wasserstein on 1000 / 100 reference-quantile bins; ev: Evidently.",
              "timed: " + r["timed"]]
    return "\n".join(lines)


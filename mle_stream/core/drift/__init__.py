"""Drift of features and prediction scores between a reference and a live window.

- `sketch`: mergeable binned sketches (`NumericSketch`, `CategoricalSketch`) and the helpers that
  build their fixed bins from reference data.
- `statistics`: PSI, Jensen-Shannon distance, normalized Wasserstein, Kolmogorov-Smirnov and
  chi-square from two sketches, each with the error the binning can add.
- `decision`: the per-window decision, effect size over a threshold AND significance after
  Benjamini-Hochberg control across features.
- `concept`: online concept-drift detectors (river's ADWIN, PageHinkley, KSWIN and a CUSUM) on a
  version's stream of errors, with JSON snapshots that restore to the same future alarms.
"""

from mle_stream.core.drift.concept import (
    CUSUM,
    ConceptAlarm,
    ConceptDriftMonitor,
    DetectorSpec,
    pane_sequence,
    pane_values_sequence,
)
from mle_stream.core.drift.decision import (
    DriftThresholds,
    FeatureDrift,
    benjamini_hochberg,
    decide_drift,
)
from mle_stream.core.drift.sketch import (
    CategoricalSketch,
    NumericSketch,
    quantile_edges,
    top_categories,
)
from mle_stream.core.drift.statistics import (
    CategoricalComparison,
    ChiSquareResult,
    Estimate,
    KSResult,
    NumericComparison,
    chi_square,
    compare_categorical,
    compare_numeric,
    jensen_shannon,
    kolmogorov_smirnov,
    ks_p_value,
    psi,
    wasserstein,
    wasserstein_normed,
)

__all__ = [
    "CUSUM", "ConceptAlarm", "ConceptDriftMonitor", "DetectorSpec", "pane_sequence", "pane_values_sequence",
    "CategoricalComparison", "CategoricalSketch", "ChiSquareResult", "DriftThresholds", "Estimate", "FeatureDrift",
    "KSResult", "NumericComparison", "NumericSketch", "benjamini_hochberg", "chi_square", "compare_categorical",
    "compare_numeric", "decide_drift", "jensen_shannon", "kolmogorov_smirnov", "ks_p_value", "psi",
    "quantile_edges", "top_categories", "wasserstein", "wasserstein_normed",
]

"""Sequential checks on proportions, regression errors and calibration, and their evidence.

Independent truths: scikit-learn's confusion matrix and numpy on the raw predictions for what a
window's metrics give each test; the tests fed the raw per-prediction values (MeanTest.update_values)
for what a check decides; scipy.stats.binom for the confidence bound's likelihood ratios; seeded
simulations for the false-rollback rate, the power and the confidence bounds' coverage; a stream
replayed through ModelEvaluator and the policy for the whole path.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix

from mle_stream.core.checks import SEQUENTIAL_INPUTS, CheckRule, SequentialSpec, judge_check
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Label, Prediction
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.multiclass import MulticlassMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes, MulticlassOutcomes, RegressionOutcomes
from mle_stream.core.metrics.regression import RegressionMetrics
from mle_stream.core.sequential import ErrorRateTest, MeanTest, Verdict, gaussian_msprt_log_lr, half_normal_grid
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError

THRESHOLDS = (0.3, 0.7)


def _binary(rng: np.random.Generator, n: int, fpr: float = 0.1, tpr: float = 0.8) -> BinaryOutcomes:
    y = rng.random(n) < 0.3
    predicted = np.where(y, rng.random(n) < tpr, rng.random(n) < fpr)
    score = np.clip(np.where(predicted, 0.75, 0.25) + rng.normal(0, 0.2, n), 0, 1)
    return BinaryOutcomes(y, score, predicted)


# --- what a window's metrics give each test ---

def test_rate_inputs_are_the_confusion_counts_of_sklearn() -> None:
    rng = np.random.default_rng(1)
    batch = _binary(rng, 3001)
    state = BinaryMetrics(THRESHOLDS)
    state.update(batch)
    values = state.values()
    y = batch.y_true
    for suffix, decision in [("", batch.predicted)] + [(f"@{t!r}", batch.score >= t) for t in THRESHOLDS]:
        tn, fp, fn, tp = confusion_matrix(y, decision, labels=[False, True]).ravel()
        want = {"accuracy": (len(y), fp + fn), "precision": (tp + fp, fp), "recall": (tp + fn, fn)}
        for metric, counts in want.items():
            assert SEQUENTIAL_INPUTS[metric].counts(values, metric + suffix) == counts, metric + suffix
    assert SEQUENTIAL_INPUTS["error_rate"].counts(values, "error_rate") == (len(y), int((y != batch.predicted).sum()))

    labels = np.array(["bird", "cat", "dog", "eel"])
    truth, guess = rng.choice(labels, 2000, p=[0.1, 0.4, 0.45, 0.05]), rng.choice(labels, 2000)
    multi = MulticlassMetrics()
    multi.update(MulticlassOutcomes(truth, guess, rng.random(2000)))
    mv = multi.values()
    matrix = confusion_matrix(truth, guess, labels=labels)
    assert SEQUENTIAL_INPUTS["accuracy"].counts(mv, "accuracy") == (2000, 2000 - int(np.trace(matrix)))
    for i, c in enumerate(labels):
        row = matrix[i]
        assert SEQUENTIAL_INPUTS["recall"].counts(mv, f"recall[{c}]") == (row.sum(), row.sum() - row[i]), c


def test_a_window_without_predicted_positives_adds_no_precision_trials() -> None:
    state = BinaryMetrics(THRESHOLDS)
    state.update(BinaryOutcomes(np.array([True, False]), np.array([0.1, 0.2]), np.array([False, False])))
    assert SEQUENTIAL_INPUTS["precision"].counts(state.values(), "precision@0.7") == (0, 0)
    assert SEQUENTIAL_INPUTS["precision"].counts(BinaryMetrics().values(), "precision") == (0, 0)


def _windows_values(state_type: type, batch: object) -> dict[str, float | None]:
    state = state_type()
    state.update(batch)
    return {**state.values(), "labeled": state.count}


@pytest.mark.parametrize("metric", ["mae", "rmse", "brier_score"])
def test_mean_checks_decide_as_the_mean_test_fed_the_raw_per_prediction_values(metric: str) -> None:
    rng = np.random.default_rng(2)
    rule = CheckRule("m", metric, "higher", min_samples=50, consecutive=1, sequential=SequentialSpec(alpha=0.01))
    reference = SequentialSpec(alpha=0.01).new_test(metric, 50)
    assert isinstance(reference, MeanTest)
    test_state = None
    for window in range(6):
        per_side = []
        for n, spread in ((120, 1.0 + 0.4 * window), (600, 1.0)):  # the candidate worsens window by window
            if metric == "brier_score":
                y = rng.random(n) < 0.4
                score = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.1 * spread, n), 0, 1)
                values = _windows_values(BinaryMetrics, BinaryOutcomes(y, score, score >= 0.5))
                raw = (score - y) ** 2  # the per-prediction Brier score
            else:
                y = rng.normal(50, 10, n)
                y_pred = y + rng.standard_t(8, n) * spread
                values = _windows_values(RegressionMetrics, RegressionOutcomes(y, y_pred))
                raw = np.abs(y - y_pred) if metric == "mae" else (y - y_pred) ** 2
            per_side.append((values, raw))
        (c_values, c_raw), (b_values, b_raw) = per_side
        reference.update_values(c_raw, b_raw)
        result = judge_check(rule, b_values, c_values, test_state=test_state)
        test_state = json.loads(json.dumps(result.test_state))
        assert result.test is not None
        assert result.test["log_likelihood_ratio"] == pytest.approx(reference.log_likelihood_ratio(), rel=1e-9)
        assert result.verdict is reference.decide().verdict
    assert result.verdict is Verdict.FAIL, result.reason


def test_metric_states_restore_their_previous_snapshot_version() -> None:
    # Literal snapshots written by the previous format (binary and regression v2, ErrorRateTest v1):
    # every value restores but the new spread, which those did not keep and is then unknown.
    # (written by the previous code from y = [True, False], score = [0.9, 0.2], predicted = score >= 0.5)
    binary_v2 = {"kind": "binary", "v": 2, "thresholds": [0.5], "score_bins": 10000, "calibration_bins": 10,
                 "n": 2, "positives": 1, "tp": 1, "fp": 0, "tp_at": [1], "fp_at": [0],
                 "loss_moments": [2, [5917803174419815, 1020], [19761194757584601988085777997457, 966]],
                 "brier_sum": [3602879701896397, 1018], "cal_count": [0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
                 "cal_positives": [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                 "cal_score_sum": [[0, 0], [3602879701896397, 1020], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0],
                                   [8106479329266893, 1021], [0, 0]],
                 "level": 0, "bins": [371037987199, 791516488085], "bin_pos": [0, 1], "bin_neg": [1, 0]}
    b = BinaryMetrics.restore(binary_v2).values()
    assert (b["count"], b["accuracy"], b["brier_score"], b["brier_score_std"]) == (2, 1.0, 0.025, None)
    assert b["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    # (y = [1, 2], y_pred = [1.5, 1])
    regression_v2 = {"kind": "regression", "v": 2, "moments": [2, [3, 1074], [5, 1074]],
                     "abs_error_sum": [3, 1073], "sq_error_sum": [5, 1072], "pct_error_sum": [1, 1074],
                     "pred_sum": [5, 1073]}
    r = RegressionMetrics.restore(regression_v2)
    assert r.values()["mae"] == 0.75 and r.values()["squared_error_std"] is None
    assert r.values()["mae_std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    r.update(RegressionOutcomes(np.array([1.0, 2.0]), np.array([1.5, 1.0])))
    assert r.values()["squared_error_std"] is None and r.values()["count"] == 4  # unknown stays unknown
    error_rate_v1 = {**ErrorRateTest().snapshot(), "version": 1}
    del error_rate_v1["lattice"]
    test = ErrorRateTest.restore(error_rate_v1)
    test.update(400, 40, 3600, 72)
    assert test.decide().verdict is Verdict.FAIL and test.lower_bound() is None


def test_a_mean_check_leaves_out_a_window_whose_spread_is_unknown() -> None:
    rule = CheckRule("m", "rmse", "higher", min_samples=2, consecutive=1, sequential=SequentialSpec())
    window = {"labeled": 10, "rmse": 1.0, "squared_error_std": None}
    result = judge_check(rule, window, window)
    assert result.verdict is Verdict.INCONCLUSIVE and "left out" in result.reason
    assert result.test is not None and result.test["windows"] == 0
    # Errors near the largest regression values accepted: the squared errors' spread is beyond a
    # double (left out, as above), the absolute errors' is not; neither check raises.
    huge = RegressionMetrics()
    huge.update(RegressionOutcomes(np.tile([9e149, -9e149, 1.0], 40), np.tile([-9e149, 9e149, 2.0], 40)))
    values = {**huge.values(), "labeled": huge.count}
    assert values["squared_error_std"] is not None and values["squared_error_std"] > 1e300
    rmse = judge_check(rule, values, values)
    assert rmse.verdict is Verdict.INCONCLUSIVE and "left out" in rmse.reason
    mae = judge_check(CheckRule("a", "mae", "higher", min_samples=2, consecutive=1, sequential=SequentialSpec()),
                      values, values)
    assert mae.verdict is Verdict.PASS and mae.test is not None and mae.test["windows"] == 1


# --- the confidence bounds ---

def test_the_rate_ratio_bound_is_the_largest_null_the_binomial_mixture_rejects() -> None:
    windows = [(100, 12, 900, 40), (120, 15, 880, 38), (90, 9, 910, 41)]
    test = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, min_samples=10)
    for w in windows:
        test.update(*w)
    u, log_w = half_normal_grid(test.mixing_scale, test.grid_points)

    def log_lr(null: float) -> float:  # from scipy's binomial, window by window, mixed over the grid
        total = np.zeros_like(u)
        for n_c, x_c, n_b, x_b in windows:
            share, k = n_c / (n_c + n_b), x_c + x_b
            q = lambda rho: rho * share / (rho * share + 1 - share)  # noqa: E731, B023
            total += stats.binom.logpmf(x_c, k, q(null * np.exp(u))) - stats.binom.logpmf(x_c, k, q(null))
        return float(np.log(np.exp(total + log_w).sum()))

    nulls = test.null_ratios()
    assert test.null_log_likelihood_ratios() == pytest.approx([log_lr(r) for r in nulls], abs=1e-8)
    assert log_lr(1.1) == pytest.approx(test.log_likelihood_ratio(), abs=1e-9)
    bound = test.lower_bound()
    assert bound is not None and 1.1 <= bound < 3.3 / 1.0  # the candidate's ratio is ~3
    i = int(np.flatnonzero(nulls == bound)[0])
    assert log_lr(nulls[i]) >= math.log(100) > log_lr(nulls[i + 1])
    decision = test.decide()
    assert decision.verdict is Verdict.FAIL and decision.lower_bound == bound
    assert f"interval ({bound:.4g}, inf) excludes 1.1" in decision.reason


def test_the_mean_bound_is_where_the_mixture_reaches_the_threshold() -> None:
    rng = np.random.default_rng(3)
    test = MeanTest(alpha=0.05, min_relative_increase=0.0, mixing_scale=0.2)
    test.update_values(rng.normal(1.1, 1, 500), rng.normal(1.0, 1, 2000))
    theta_hat, variance, tau = test._statistics()  # type: ignore[misc]
    bound = test.lower_bound()
    assert bound is not None and bound < theta_hat
    assert float(gaussian_msprt_log_lr(theta_hat - bound, variance, tau)) == pytest.approx(math.log(20), abs=1e-9)
    assert (test.decide().verdict is Verdict.FAIL) == (bound >= 0)


def test_the_confidence_bounds_cover_the_truth_at_every_look() -> None:
    # 300 seeded rollouts of 25 windows each, a look after every window: the bound must stay below
    # the true effect at every look in at least 1 - alpha of them.
    rng = np.random.default_rng(4)
    alpha, runs, looks, ratio = 0.05, 300, 25, 1.5
    rate_misses = mean_misses = 0
    for _ in range(runs):
        rate = ErrorRateTest(alpha=alpha, min_relative_increase=0.0, min_samples=1)
        mean = MeanTest(alpha=alpha, min_relative_increase=0.1, min_samples=1)
        rate_missed = mean_missed = False
        for _ in range(looks):
            n_c = int(rng.binomial(1000, 0.2))
            rate.update(n_c, int(rng.binomial(n_c, 0.03 * ratio)), 1000 - n_c, int(rng.binomial(1000 - n_c, 0.03)))
            bound = rate.lower_bound()
            rate_missed |= bound is not None and bound > ratio
            mean.update_values(rng.gamma(2.0, 0.6, 100), rng.gamma(2.0, 0.5, 400))  # means 1.2 and 1.0
            mean_bound = mean.lower_bound()
            mean_missed |= mean_bound is not None and mean_bound > 1.2 - 1.1 * 1.0
        rate_misses += rate_missed
        mean_misses += mean_missed
    assert rate_misses <= alpha * runs and mean_misses <= alpha * runs, (rate_misses, mean_misses)


# --- false rollbacks and power of the new families ---

def test_proportion_and_mean_checks_keep_alpha_on_equal_versions_and_catch_a_degradation() -> None:
    # Precision at 80% (its failures: 20% of predicted positives), 40 windows a rollout, looked at
    # after every one; A/A, then the candidate's false positives among predicted positives doubled.
    # Means: absolute errors (lognormal), A/A, then the candidate's 25% larger.
    rng = np.random.default_rng(5)
    alpha, runs, windows = 0.05, 150, 40
    outcomes = {}
    for name, worse in (("aa", 1.0), ("degraded", 2.0)):
        rate_fired = mean_fired = 0
        for _ in range(runs):
            rate = ErrorRateTest(alpha=alpha, min_samples=100)
            mean = MeanTest(alpha=alpha, min_samples=100)
            rate_hit = mean_hit = False
            for _ in range(windows):
                c_pp, b_pp = int(rng.binomial(100, 0.3)), int(rng.binomial(900, 0.3))
                rate.update(c_pp, int(rng.binomial(c_pp, 0.2 * worse)), b_pp, int(rng.binomial(b_pp, 0.2)))
                rate_hit |= rate.log_likelihood_ratio() >= math.log(1 / alpha) and rate.candidate_n >= 100
                mean.update_values(rng.lognormal(0, 0.5, 100) * (1 + 0.25 * (worse - 1)), rng.lognormal(0, 0.5, 900))
                mean_hit |= mean.log_likelihood_ratio() >= math.log(1 / alpha) and mean.candidate_n >= 100
            rate_fired += rate_hit
            mean_fired += mean_hit
        outcomes[name] = (rate_fired / runs, mean_fired / runs)
    limit = alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert max(outcomes["aa"]) <= limit, outcomes
    assert min(outcomes["degraded"]) >= 0.9, outcomes


# --- topology ---

@pytest.mark.parametrize("task, metric, accepted", [
    ("binary", "precision@0.3", True), ("binary", "recall", True), ("binary", "brier_score", True),
    ("multiclass", "recall[cat]", True), ("multiclass", "accuracy", True), ("regression", "rmse", True),
    ("regression", "mae", True), ("multiclass", "log_loss", False), ("binary", "f1", False),
    ("regression", "r2", False),
])
def test_sequential_is_accepted_where_a_test_exists(task: str, metric: str, accepted: bool) -> None:
    text = (f'model: m\ntask: {task}\nbaseline: {{version: "1"}}\ncandidate: {{version: "2"}}\n'
            "metrics: {thresholds: [0.3]}\n" if task == "binary" else
            f'model: m\ntask: {task}\nbaseline: {{version: "1"}}\ncandidate: {{version: "2"}}\n')
    text += f"checks:\n  - {{name: s, metric: '{metric}', sequential: {{alpha: 0.01}}}}\n"
    if accepted:
        assert parse_topology(text).checks[0].sequential is not None
        return
    with pytest.raises(ConfigError) as error:
        parse_topology(text)
    message = str(error.value)
    assert "checks[0].sequential: is for " in message and f"of a {task} model" in message
    assert f"not {metric}" in message and ("rmse" in message) == (task == "regression")


# --- the whole path: a replayed stream through the evaluator and the policy ---

TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, grace: 1s, retention: 1m}\n"
    "checks:\n"
    "  - {name: precision, metric: precision, sequential: {alpha: 0.01}}\n"
    "  - {name: recall, metric: recall, sequential: {alpha: 0.01}}\n")


def _replay(candidate_fpr: float, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    evaluator, judgements, commands = ModelEvaluator(TOPOLOGY), [], []
    for w in range(12):
        n = 1000
        version = np.where(rng.random(n) < 0.25, "2", "1")
        truth = rng.random(n) < 0.3
        fpr = np.where(version == "2", candidate_fpr, 0.05)  # recall is 0.8 for both
        predicted = np.where(truth, rng.random(n) < 0.8, rng.random(n) < fpr)
        ts = w * 10_000 + rng.integers(0, 10_000, n)
        ids = [f"{seed}-{w}-{i}" for i in range(n)]
        evaluator.add_predictions([Prediction(ids[i], "fraud", str(version[i]), int(ts[i]),
                                              score=0.9 if predicted[i] else 0.1) for i in range(n)], 10**12)
        evaluator.add_labels([Label(ids[i], "fraud", int(ts[i]) + 100, bool(truth[i])) for i in range(n)])
        out = evaluator.advance(10**12)
        judgements += out.judgements
        commands += out.commands
    return judgements, commands


def test_a_candidate_worse_in_precision_only_is_rolled_back_and_an_equal_one_never() -> None:
    judgements, commands = _replay(0.05, 6)
    assert len(judgements) == 11 and commands == []
    assert all(r.verdict is not Verdict.FAIL for j in judgements for r in j.checks)

    judgements, commands = _replay(0.15, 7)  # precision 0.87 -> 0.70: 2.3 x the false positives
    (rollback,) = [c for c in commands if c.kind.value == "ROLLBACK"]
    assert rollback.rule == "precision"
    failing = next(j for j in judgements if j.verdict is Verdict.FAIL)
    assert failing.window_end == rollback.window_end
    precision, recall = failing.checks
    assert precision.verdict is Verdict.FAIL and recall.verdict is not Verdict.FAIL
    evidence = json.loads(rollback.evidence)["windows"][-1]["checks"][0]["sequential"]
    assert evidence["effect"] == "rate ratio" and evidence["estimate"] > 1.5
    low, high = evidence["confidence_interval"]
    assert 1.1 <= low < evidence["estimate"] and high is None and evidence["confidence"] == 0.99
    assert evidence["log_likelihood_ratio"] >= evidence["threshold"]
    assert "false positives among predicted positives" in precision.reason
    assert "excludes 1.1" in precision.reason

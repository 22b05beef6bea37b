import dataclasses
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mle_stream.core.checks import CheckResult, judge_check
from mle_stream.core.events import CommandKind
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from mle_stream.core.policy import PolicyState, Verdict, WindowJudgement, decide, decide_outage, judge
from mle_stream.core.topology import parse_topology
from mle_stream.core.window_state import WindowState
from mle_stream.errors import ConfigError

TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, grace: 0s}\n"
    "rollback: {max_increase: 0.05, consecutive_windows: 3, min_samples: 100}\n"
)


def metrics(labeled: int, errors: int) -> WindowState:
    """`labeled` predictions, the first `errors` of them wrong."""
    m = WindowState.for_topology(TOPOLOGY)
    m.serve(np.full(labeled, np.nan), np.zeros(labeled, dtype=bool))
    truth = np.ones(labeled, dtype=bool)
    decision = np.arange(labeled) >= errors
    m.score(BinaryOutcomes(truth, np.where(decision, 0.9, 0.1), decision))
    return m


def run(windows: list[tuple[tuple[int, int], tuple[int, int]]]) -> tuple[list[Verdict], list]:
    state, verdicts, commands = PolicyState(), [], []
    for i, (base, cand) in enumerate(windows):
        j = judge(TOPOLOGY, i * 10_000, metrics(*base), metrics(*cand))
        state, out = decide(TOPOLOGY, state, j, now_ms=999)
        verdicts.append(j.verdict)
        commands.extend(out)
    return verdicts, commands


def test_judge_hand_computed() -> None:
    # baseline 8/100 = 0.08, candidate 14/100 = 0.14: +0.06 > 0.05 -> FAIL; 13/100 -> +0.05 is not > 0.05.
    assert judge(TOPOLOGY, 0, metrics(100, 8), metrics(100, 14)).verdict is Verdict.FAIL
    assert judge(TOPOLOGY, 0, metrics(100, 8), metrics(100, 12)).verdict is Verdict.PASS
    j = judge(TOPOLOGY, 0, metrics(100, 8), metrics(99, 90))
    assert j.verdict is Verdict.INCONCLUSIVE and "candidate 99" in j.reason


def test_three_consecutive_failures_roll_back_once() -> None:
    bad = ((200, 16), (200, 60))
    verdicts, commands = run([bad, bad, bad, bad])
    assert verdicts == [Verdict.FAIL] * 4
    assert len(commands) == 1
    cmd = commands[0]
    assert cmd.kind is CommandKind.ROLLBACK and cmd.traffic == {"1": 100, "2": 0}
    assert (cmd.window_start, cmd.window_end) == (0, 30_000)
    evidence = json.loads(cmd.evidence)
    assert [w["verdict"] for w in evidence["windows"]] == ["FAIL"] * 3
    (check,) = evidence["windows"][0]["checks"]
    assert check["candidate"]["samples"] == 200 and check["baseline"]["samples"] == 200
    assert abs(check["candidate"]["value"] - 60 / 200) < 1e-12  # 1 - accuracy
    assert evidence["rule"] == {"name": "error-rate-vs-baseline", "metric": "error_rate", "worse": "higher",
                                "max_degradation": 0.05, "min_samples": 100, "consecutive": 3, "cumulative": None,
                                "hysteresis": 0.0, "action": "rollback"}


def test_a_pass_or_an_inconclusive_window_resets_the_streak() -> None:
    bad, good, thin = ((200, 16), (200, 60)), ((200, 16), (200, 16)), ((200, 16), (50, 40))
    assert run([bad, bad, good, bad, bad])[1] == []
    assert run([bad, bad, thin, bad, bad])[1] == []


def test_too_few_labels_never_roll_back_however_bad_they_look() -> None:
    thin = ((1000, 10), (99, 99))
    verdicts, commands = run([thin] * 20)
    assert set(verdicts) == {Verdict.INCONCLUSIVE} and commands == []


def test_command_id_is_deterministic_and_ignores_issue_time() -> None:
    bad = ((200, 16), (200, 60))
    _, first = run([bad] * 3)
    state = PolicyState()
    for i in range(3):
        state, again = decide(TOPOLOGY, state, judge(TOPOLOGY, i * 10_000, metrics(200, 16), metrics(200, 60)),
                              now_ms=12345)
    assert again[0].command_id == first[0].command_id and again[0].issued_at != first[0].issued_at
    other_rule = dataclasses.replace(TOPOLOGY, checks=(dataclasses.replace(TOPOLOGY.checks[0], name="other"),))
    state = PolicyState()
    for i in range(3):
        state, third = decide(other_rule, state, judge(other_rule, i * 10_000, metrics(200, 16), metrics(200, 60)), 1)
    assert third[0].command_id != first[0].command_id


def test_policy_state_round_trips_through_json() -> None:
    bad, thin = ((200, 16), (200, 60)), ((200, 16), (50, 40))
    state = PolicyState()
    judgements = [judge(TOPOLOGY, i * 10_000, metrics(*b), metrics(*c)) for i, (b, c) in enumerate([thin, bad, bad])]
    for j in judgements:
        state, _ = decide(TOPOLOGY, state, j, now_ms=1)
    assert len(state.check("error-rate-vs-baseline").streak) == 2
    restored = PolicyState.restore(json.loads(json.dumps(state.snapshot())))
    assert restored == state
    # The next FAIL window rolls back from the restored state exactly as from the original one.
    nxt = judge(TOPOLOGY, 30_000, metrics(200, 16), metrics(200, 60))
    assert decide(TOPOLOGY, restored, nxt, now_ms=5) == decide(TOPOLOGY, state, nxt, now_ms=5)
    after, commands = decide(TOPOLOGY, restored, nxt, now_ms=5)
    assert after.rolled_back and len(commands) == 1
    assert PolicyState.restore(json.loads(json.dumps(after.snapshot()))) == after

def check_results(verdict: Verdict, b: float | None, c: float | None, nb: int, nc: int) -> tuple[CheckResult, ...]:
    return (CheckResult("error-rate-vs-baseline", "error_rate", verdict, b, c, nb, nc, f"reason ü {verdict.value}"),)


judgements = st.builds(
    lambda start, verdict, b, c, nb, nc, served, labeled: WindowJudgement(
        start, start + 10_000, verdict, check_results(verdict, b, c, nb, nc), f"why {verdict.value}",
        served, min(labeled, served)),
    st.integers(0, 10**12), st.sampled_from(list(Verdict)),
    st.one_of(st.none(), st.floats(0, 1)), st.one_of(st.none(), st.floats(0, 1)),
    st.integers(0, 10**6), st.integers(0, 10**6),
    # the candidate's coverage: often below the floor, so the label-silence state takes part too
    st.integers(0, 1000), st.sampled_from([0, 1, 30, 1000]),
)


@settings(max_examples=200, deadline=None)
@given(before=st.lists(judgements, max_size=6), after=st.lists(judgements, max_size=6))
def test_restored_policy_state_decides_identically(before, after) -> None:
    state = PolicyState()
    for j in before:
        state, _ = decide(TOPOLOGY, state, j, now_ms=1)
    restored = PolicyState.restore(json.loads(json.dumps(state.snapshot())))
    assert restored == state
    for j in after:
        assert decide(TOPOLOGY, restored, j, now_ms=2) == decide(TOPOLOGY, state, j, now_ms=2)
        state, _ = decide(TOPOLOGY, state, j, now_ms=2)
        restored, _ = decide(TOPOLOGY, restored, j, now_ms=2)


# --- checks: limits, directions, cumulative, hysteresis, hold, ERROR -----------------------------

def topology(checks: str, extra: str = ""):
    return parse_topology('model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
                          f"windows: {{size: 10s, grace: 0s}}\nchecks:\n{checks}{extra}")


def values(**kw: float) -> dict[str, float]:
    return {"labeled": 500, "predictions": 500, "latency_samples": 500, **kw}


@pytest.mark.parametrize("rule, baseline, candidate, verdict", [
    # absolute limits, both directions
    ("{name: p99, metric: latency_p99_ms, max: 500}", {}, {"latency_p99_ms": 501.0}, Verdict.FAIL),
    ("{name: p99, metric: latency_p99_ms, max: 500}", {}, {"latency_p99_ms": 500.0}, Verdict.PASS),
    ("{name: auc, metric: roc_auc, min: 0.92}", {}, {"roc_auc": 0.919}, Verdict.FAIL),
    ("{name: auc, metric: roc_auc, min: 0.92}", {}, {"roc_auc": 0.92}, Verdict.PASS),
    # relative to the baseline: f1 gets worse downwards; 0.80 -> 0.75 is 0.05 = 6.25% worse
    ("{name: f1, metric: f1, max_degradation: 0.04}", {"f1": 0.80}, {"f1": 0.75}, Verdict.FAIL),
    ("{name: f1, metric: f1, max_degradation: 0.06}", {"f1": 0.80}, {"f1": 0.75}, Verdict.PASS),
    ("{name: f1, metric: f1, max_degradation_relative: 0.06}", {"f1": 0.80}, {"f1": 0.75}, Verdict.FAIL),
    ("{name: f1, metric: f1, max_degradation_relative: 0.07}", {"f1": 0.80}, {"f1": 0.75}, Verdict.PASS),
    ("{name: f1, metric: f1, max_degradation: 0.0}", {"f1": 0.80}, {"f1": 0.90}, Verdict.PASS),  # better is fine
    # samples: a quality metric counts labeled predictions, latency counts latency reports
    ("{name: f1, metric: f1, min: 0.5, min_samples: 501}", {}, {"f1": 0.1}, Verdict.INCONCLUSIVE),
    ("{name: p99, metric: latency_p99_ms, max: 5, min_samples: 10}", {}, {"latency_p99_ms": 9.0, "latency_samples": 9},
     Verdict.INCONCLUSIVE),
    ("{name: f1, metric: f1, max_degradation: 0.1}", {"f1": None}, {"f1": 0.5}, Verdict.INCONCLUSIVE),
])
def test_check_limits_hand_computed(rule: str, baseline: dict, candidate: dict, verdict: Verdict) -> None:
    (check,) = topology(f"  - {rule}\n").checks
    assert judge_check(check, values(**baseline), values(**candidate)).verdict is verdict


def test_hysteresis_needs_the_value_back_inside_by_the_margin() -> None:
    (check,) = topology("  - {name: p99, metric: latency_p99_ms, max: 500, hysteresis: 50}\n").checks
    assert judge_check(check, values(), values(latency_p99_ms=480.0)).verdict is Verdict.PASS
    assert judge_check(check, values(), values(latency_p99_ms=480.0), failing=True).verdict is Verdict.FAIL
    assert judge_check(check, values(), values(latency_p99_ms=449.0), failing=True).verdict is Verdict.PASS


def run_checks(t, windows: list[tuple[dict, dict]]) -> tuple[list[WindowJudgement], list]:
    """Drive judge + decide with hand-made window metrics (WindowState stand-ins with values())."""
    class W:
        def __init__(self, v: dict) -> None:
            self.v, self.predictions = values(**v), 0 if v.get("empty") else 500
            self.labeled = self.predictions  # every prediction labeled: no label silence here

        def values(self, _window_s: float) -> dict:
            return self.v

    state, judgements, commands = PolicyState(), [], []
    for i, (b, c) in enumerate(windows):
        j = judge(t, i * 10_000, W(b), W(c), state)
        state, out = decide(t, state, j, now_ms=7)
        judgements.append(j)
        commands += out
    return judgements, commands


def test_cumulative_failures_roll_back_even_when_not_consecutive() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 3, cumulative: 3}\n")
    bad, good = ({}, {"latency_p99_ms": 900.0}), ({}, {"latency_p99_ms": 100.0})
    judgements, commands = run_checks(t, [bad, good, bad, good, bad, good])
    assert [c.kind for c in commands] == [CommandKind.ROLLBACK]
    assert commands[0].window_end == 50_000 and "3 windows (cumulative limit 3)" in commands[0].reason
    assert json.loads(commands[0].evidence)["failures"] == 3


def test_the_first_check_to_fire_names_the_rollback_and_every_check_is_in_the_evidence() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 2}\n"
                 "  - {name: auc, metric: roc_auc, min: 0.9, consecutive: 2}\n")
    bad = ({}, {"latency_p99_ms": 900.0, "roc_auc": 0.5})
    judgements, commands = run_checks(t, [bad, bad])
    assert judgements[0].verdict is Verdict.FAIL and len(judgements[0].checks) == 2
    (cmd,) = commands
    evidence = json.loads(cmd.evidence)
    assert cmd.rule == "p99" and evidence["also_fired"] == ["auc"]
    assert [c["check"] for c in evidence["windows"][1]["checks"]] == ["p99", "auc"]


def test_a_hold_check_holds_and_repeats_only_after_the_cooldown() -> None:
    t = topology("  - {name: drift, metric: mean_score, worse: higher, max: 0.6, consecutive: 1, action: hold}\n",
                 "decision: {cooldown: 25s}\n")
    bad = ({}, {"mean_score": 0.9})
    _, commands = run_checks(t, [bad] * 6)
    assert [c.kind for c in commands] == [CommandKind.HOLD, CommandKind.HOLD]
    assert [c.window_end for c in commands] == [10_000, 40_000]  # 10 s, then >= 25 s later
    assert commands[0].traffic == {} and json.loads(commands[0].evidence)["rule"]["action"] == "hold"


def test_a_hold_check_failing_for_days_keeps_a_bounded_state_and_evidence() -> None:
    # Every failing window used to add its evidence to the state and to every later HOLD: after a
    # day of 10 s windows a HOLD would pass Kafka's 1 MB message limit.
    t = topology("  - {name: drift, metric: mean_score, worse: higher, max: 0.6, consecutive: 3, action: hold}\n",
                 "decision: {cooldown: 0s}\n")
    bad = ({}, {"mean_score": 0.9})
    state = PolicyState()
    sizes = []
    for i in range(200):
        class W:
            predictions = labeled = 500

            def values(self, _window_s: float,
                       v: dict = values(**bad[1])) -> dict:  # noqa: B008 (built once, on purpose)
                return v
        state, commands = decide(t, state, judge(t, i * 10_000, W(), W(), state), now_ms=7)
        sizes.append(len(json.dumps(state.snapshot())))
        if i >= 2:
            (hold,) = commands
            evidence = json.loads(hold.evidence)
            # The last `consecutive` windows, the count of all of them, and the reason says how many.
            assert [w["window_end"] for w in evidence["windows"]] == [(i - 1) * 10_000, i * 10_000, (i + 1) * 10_000]
            assert evidence["consecutive_failures"] == i + 1
            assert f"in {i + 1} consecutive windows" in hold.reason
    assert sizes[-1] < 1.05 * sizes[10]  # a few more digits in the counts and times, nothing more
    assert PolicyState.restore(json.loads(json.dumps(state.snapshot()))) == state


def test_a_window_without_any_data_is_an_error_that_holds_and_never_rolls_back() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 2}\n")
    empty = ({"empty": True}, {"empty": True})
    bad = ({}, {"latency_p99_ms": 900.0})
    judgements, commands = run_checks(t, [bad, empty, empty, bad, empty, bad])
    assert [j.verdict for j in judgements] == [Verdict.FAIL, Verdict.ERROR, Verdict.ERROR, Verdict.FAIL,
                                               Verdict.ERROR, Verdict.FAIL]
    assert [c.kind for c in commands] == [CommandKind.HOLD]  # no two FAILs in a row; the cooldown (5 min)
    assert "no data" in commands[0].reason and commands[0].window_end == 20_000


def test_a_silent_source_holds_once_per_outage() -> None:
    t = topology("  - {name: err, metric: error_rate, max_degradation: 0.05}\n", "decision: {outage_after: 60s}\n")
    state, out = decide_outage(t, PolicyState(), "labels", silent_since_ms=1_000, now_ms=62_000)
    assert [c.kind for c in out] == [CommandKind.HOLD] and "no labels for 61 s" in out[0].reason
    again, none = decide_outage(t, state, "labels", silent_since_ms=1_000, now_ms=120_000)
    assert none == [] and again == state


@pytest.mark.parametrize("checks, message", [
    ("  - {name: a, metric: nope, max: 1}\n", "checks[0].metric: 'nope' is not a metric of a binary model"),
    ("  - {name: a, metric: mae, max: 1}\n", "'mae' is not a metric of a binary model"),
    ("  - {name: a, metric: f1@0.3, min: 0.5}\n", "add 0.3 to metrics.thresholds"),
    ("  - {name: a, metric: mean_score, max: 0.5}\n", "checks[0].worse: say in which direction mean_score gets worse"),
    ("  - {name: a, metric: f1}\n", "checks[0]: sets no limit"),
    ("  - {name: a, metric: f1, min: 0.1}\n  - {name: a, metric: f1, min: 0.2}\n", "already the name of another check"),
    ("  - {name: a, metric: f1, min: 0.1, action: page}\n", "checks[0].action: expected one of rollback, hold"),
    ("  - {metric: f1, min: 0.1}\n", "checks[0].name: is required"),
])
def test_check_errors_name_the_line_and_what_is_expected(checks: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as exc:
        parse_topology('model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
                       f"checks:\n{checks}", "t.yaml")
    assert "t.yaml:" in str(exc.value)


def test_progressive_rollout_steps_up_through_the_gate_and_promotes_at_100() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500}\n",
                 "rollout: {steps: [10, 50, 100], windows: 2, samples: 900}\ndecision: {cooldown: 0s}\n")
    good, bad, thin = ({}, {"latency_p99_ms": 100.0}), ({}, {"latency_p99_ms": 900.0}), \
        ({}, {"latency_p99_ms": 100.0, "latency_samples": 10})
    # 500 samples a window: two PASS windows in a row make 1000 >= 900.
    judgements, commands = run_checks(t, [good, bad, good, thin, good, good, good, good, good])
    assert [j.verdict for j in judgements][3] is Verdict.INCONCLUSIVE
    assert [(c.kind, c.traffic, c.window_start, c.window_end) for c in commands] == [
        (CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, 20_000, 50_000),  # windows 2 and 4 (3 neither counts nor resets)
        (CommandKind.PROMOTE, {"1": 0, "2": 100}, 50_000, 70_000),
    ]
    evidence = json.loads(commands[0].evidence)
    assert (evidence["from_percent"], evidence["to_percent"]) == (10, 50) and len(evidence["windows"]) == 2
    assert commands[0].rule == "step-50" and commands[1].rule == "step-100"


def test_a_step_waits_for_the_cooldown_and_rollback_ends_the_rollout() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 1}\n",
                 "rollout: {steps: [10, 50, 100], windows: 1, samples: 0}\ndecision: {cooldown: 25s}\n")
    good, bad = ({}, {"latency_p99_ms": 100.0}), ({}, {"latency_p99_ms": 900.0})
    _, commands = run_checks(t, [good, good, good, good, bad, good])
    assert [(c.kind, c.window_end) for c in commands] == [
        (CommandKind.SET_TRAFFIC, 10_000), (CommandKind.PROMOTE, 40_000)]  # 20 s and 30 s are within 25 s
    _, commands = run_checks(t, [good, bad, good, good])
    assert [c.kind for c in commands] == [CommandKind.SET_TRAFFIC, CommandKind.ROLLBACK]


@pytest.mark.parametrize("rollout, message", [
    ("rollout: {steps: [10, 5, 100]}\n", "rollout.steps: must rise strictly and end at 100"),
    ("rollout: {steps: [10, 50]}\n", "must rise strictly and end at 100"),
    ("rollout: {steps: [0, 100]}\n", "rollout.steps[0]: expected a whole percentage in 1..100"),
])
def test_rollout_steps_are_validated(rollout: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        topology("  - {name: a, metric: f1, min: 0.1}\n", rollout)


@pytest.mark.parametrize("candidate_rate", [0.02, 0.06])  # A/A, and a tripled error rate
def test_a_sequential_check_decides_as_the_test_fed_the_same_windows(candidate_rate: float) -> None:
    from mle_stream.core.sequential import ErrorRateTest

    t = topology("  - {name: seq, metric: error_rate, sequential: {alpha: 0.01, min_relative_increase: 0.1}}\n")
    (rule,) = t.checks
    assert rule.consecutive == 1  # the test's FAIL is conclusive on its own
    rng = np.random.default_rng(5)
    reference = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, min_samples=100)
    state, expected, got, commands = PolicyState(), [], [], []
    for i in range(40):
        b_err, c_err = int(rng.binomial(900, 0.02)), int(rng.binomial(100, candidate_rate))
        reference.update(100, c_err, 900, b_err)
        expected.append(reference.decide().verdict.value)
        j = judge(t, i * 10_000, metrics(900, b_err), metrics(100, c_err), state)
        state, out = decide(t, state, j, now_ms=1)
        got.append(j.verdict.value)
        commands += out
        if state.rolled_back:
            break
        state = PolicyState.restore(json.loads(json.dumps(state.snapshot())))  # through a checkpoint every window
    assert got == expected[:len(got)]
    if candidate_rate == 0.02:
        assert commands == [] and "FAIL" not in got
    else:
        (cmd,) = commands
        assert cmd.kind is CommandKind.ROLLBACK and got[-1] == "FAIL" and got.count("FAIL") == 1
        last = json.loads(cmd.evidence)["windows"][-1]["checks"][0]["sequential"]
        assert last["log_likelihood_ratio"] == pytest.approx(reference.log_likelihood_ratio(), rel=1e-12)
        assert last["log_likelihood_ratio"] >= last["threshold"] == pytest.approx(np.log(100))


def test_sequential_settings_are_validated() -> None:
    with pytest.raises(ConfigError,
                       match=re.escape("checks[0].sequential: is for error_rate, serving_error_rate, log_loss")):
        topology("  - {name: s, metric: f1, sequential: {alpha: 0.01}}\n")
    with pytest.raises(ConfigError, match=re.escape("checks[0].sequential: decides alone")):
        topology("  - {name: s, metric: error_rate, max: 0.1, sequential: {}}\n")
    with pytest.raises(ConfigError, match=re.escape("checks[0].sequential.alpha: expected a number between 0 and 1")):
        topology("  - {name: s, metric: error_rate, sequential: {alpha: 1}}\n")


def test_a_sequential_log_loss_check_decides_as_the_mean_test_fed_the_raw_losses() -> None:
    from sklearn.metrics import log_loss

    from mle_stream.core.sequential import MeanTest

    t = topology("  - {name: ll, metric: log_loss, sequential: {alpha: 0.01, min_relative_increase: 0.05}}\n")
    rng = np.random.default_rng(8)
    reference = MeanTest(alpha=0.01, min_relative_increase=0.05, min_samples=100)
    state, got, expected, commands = PolicyState(), [], [], []

    def window(n: int, noise: float) -> tuple[WindowState, np.ndarray]:
        y = rng.random(n) < 0.3
        score = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, noise, n), 0.01, 0.99)
        state_ = WindowState.for_topology(t)
        state_.serve(np.full(n, np.nan), np.zeros(n, dtype=bool))
        state_.score(BinaryOutcomes(y, score, score >= 0.5))
        losses = np.array([log_loss(y[i:i + 1], score[i:i + 1], labels=[False, True]) for i in range(n)])
        return state_, losses

    for i in range(30):
        base, b_losses = window(400, 0.1)
        cand, c_losses = window(100, 0.1 if i < 5 else 0.35)  # the candidate's scores get noisy from window 5
        reference.update_values(c_losses, b_losses)
        expected.append(reference.decide().verdict.value)
        j = judge(t, i * 10_000, base, cand, state)
        state, out = decide(t, state, j, now_ms=1)
        got.append(j.verdict.value)
        commands += out
        if state.rolled_back:
            break
    assert got == expected[:len(got)] and got[-1] == "FAIL" and "FAIL" not in got[:5]
    (cmd,) = commands
    last = json.loads(cmd.evidence)["windows"][-1]["checks"][0]["sequential"]
    assert last["log_likelihood_ratio"] == pytest.approx(reference.log_likelihood_ratio(), rel=1e-9)


def test_a_hold_on_a_cumulative_count_fires_on_failing_windows_only() -> None:
    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 9, cumulative: 2, action: hold}\n",
                 "decision: {cooldown: 0s}\n")
    bad, good = ({}, {"latency_p99_ms": 900.0}), ({}, {"latency_p99_ms": 100.0})
    _, commands = run_checks(t, [bad, good, bad, good, good, bad])
    assert [c.window_end for c in commands] == [30_000, 60_000]  # the 2nd and 3rd failures, not the passes after


# --- manual approval gate ---------------------------------------------------------------------------

def approval_of(percent: int, model: str = "fraud", candidate: str = "2"):
    from mle_stream.core.events import Command
    return Command(command_id=f"approve-{percent}", kind=CommandKind.APPROVE, model=model, baseline_version="1",
                   candidate_version=candidate, traffic={"1": 100 - percent, candidate: percent},
                   reason="looked at the dashboard", rule="manual:approve", window_start=5, window_end=5,
                   evidence='{"operator": "ana"}', policy_version="manual", issued_at=5)


def drive(t, state, windows: list[tuple[dict, dict]], first: int = 0):
    """Like run_checks, from a given state and window index; returns (state, commands)."""
    class W:
        def __init__(self, v: dict) -> None:
            self.v, self.predictions = values(**v), 500
            self.labeled = self.predictions  # every prediction labeled: no label silence here

        def values(self, _window_s: float) -> dict:
            return self.v

    commands = []
    for i, (b, c) in enumerate(windows, start=first):
        state, out = decide(t, state, judge(t, i * 10_000, W(b), W(c), state), now_ms=7)
        commands += out
    return state, commands


def test_an_approval_step_waits_for_the_approve_command_and_then_steps_on_its_gate_windows() -> None:
    from mle_stream.core.commands import command_id
    from mle_stream.core.policy import approve

    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500}\n",
                 "rollout: {steps: [10, 50, 100], windows: 2, samples: 0, approval: [50]}\ndecision: {cooldown: 0s}\n")
    good = ({}, {"latency_p99_ms": 100.0})
    state, commands = drive(t, PolicyState(), [good, good, good, good])
    # The gate passes after two windows: one HOLD saying so, nothing more while nobody approves.
    assert [(c.kind, c.rule, c.traffic) for c in commands] == [(CommandKind.HOLD, "await-approval:step-50", {})]
    assert "mle-stream command approve --model fraud --baseline 1 --candidate 2 --percent 50" in commands[0].reason
    assert state.awaiting == 50 and state.step == 0
    # Approving another step, another model's or another candidate's changes nothing.
    for wrong in (approval_of(10), approval_of(100), approval_of(50, model="spam"), approval_of(50, candidate="3")):
        after, out, note = approve(t, state, wrong, now_ms=9)
        assert (after, out) == (state, []) and note.startswith("ignored")
    # The right approval steps at once, on the last two PASS windows (20..40 s), with the approval in the evidence.
    state2, out, note = approve(t, PolicyState.restore(json.loads(json.dumps(state.snapshot()))), approval_of(50), 9)
    assert note == "approved: SET_TRAFFIC to 50%"
    assert [(c.kind, c.traffic, c.window_start, c.window_end) for c in out] == [
        (CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, 20_000, 40_000)]
    assert out[0].command_id == command_id("fraud", "1", "2", CommandKind.SET_TRAFFIC, "step-50", 20_000, 40_000)
    assert json.loads(out[0].evidence)["approval"]["command_id"] == "approve-50"
    assert state2.awaiting is None and state2.step == 1
    assert approve(t, state2, approval_of(50), 9)[1] == []  # approving twice steps once
    # Step 100 needs no approval: the gate promotes by itself.
    _, commands = drive(t, state2, [good, good], first=4)
    assert [c.kind for c in commands] == [CommandKind.PROMOTE]


def test_a_failing_window_clears_the_wait_so_an_approval_needs_the_gate_to_pass_again() -> None:
    from mle_stream.core.policy import approve

    t = topology("  - {name: p99, metric: latency_p99_ms, max: 500, consecutive: 3}\n",
                 "rollout: {steps: [10, 100], windows: 1, samples: 0, approval: true}\ndecision: {cooldown: 0s}\n")
    good, bad = ({}, {"latency_p99_ms": 100.0}), ({}, {"latency_p99_ms": 900.0})
    state, commands = drive(t, PolicyState(), [good, bad])
    assert [c.rule for c in commands] == ["await-approval:step-100"] and state.awaiting is None
    _, out, note = approve(t, state, approval_of(100), 9)
    assert out == [] and "no step waits for approval" in note
    state, commands = drive(t, state, [good], first=2)  # passes again: asks again
    assert [c.rule for c in commands] == ["await-approval:step-100"]
    _, out, _ = approve(t, state, approval_of(100), 9)
    assert [(c.kind, c.window_start) for c in out] == [(CommandKind.PROMOTE, 20_000)]


@pytest.mark.parametrize("approval, expected", [("true", (50, 100)), ("false", ()), ("[100]", (100,))])
def test_rollout_approval_lists_the_steps_that_wait(approval: str, expected: tuple) -> None:
    t = topology("  - {name: a, metric: f1, min: 0.1}\n", f"rollout: {{steps: [10, 50, 100], approval: {approval}}}\n")
    assert t.rollout.approval == expected


def test_rollout_approval_of_a_step_that_is_not_one_is_an_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=re.escape(":8: rollout.approval: [10, 75] are not steps the candidate "
                                                    "moves to; expected some of [50, 100]")):
        topology("  - {name: a, metric: f1, min: 0.1}\n", "rollout: {steps: [10, 50, 100], approval: [10, 75]}\n")


# --- label silence: labels stop coming while predictions flow ------------------------------------

def served(predictions: int, labeled: int) -> WindowState:
    """`predictions` served, the first `labeled` of them labeled (and right)."""
    m = WindowState.for_topology(TOPOLOGY)
    m.serve(np.full(predictions, np.nan), np.zeros(predictions, dtype=bool))
    m.score(BinaryOutcomes(np.ones(labeled, dtype=bool), np.full(labeled, 0.9), np.ones(labeled, dtype=bool)))
    return m


def silence_run(t, coverage: list[tuple[int, int]], state: PolicyState | None = None, first: int = 0,
                now_ms: int = 999) -> tuple[PolicyState, list[list]]:
    """Judge and decide windows whose baseline is fully labeled and whose candidate served
    (predictions, labeled); returns the state and each window's commands."""
    state, out = state or PolicyState(), []
    for i, (n, k) in enumerate(coverage, start=first):
        j = judge(t, i * 10_000, served(1000, 1000), served(n, k), state)
        state, commands = decide(t, state, j, now_ms)
        out.append(commands)
    return state, out


def test_labels_that_stop_coming_hold_once_with_the_coverage_of_each_window() -> None:
    full, trickle, none = (1000, 1000), (1000, 20), (1000, 0)
    state, out = silence_run(TOPOLOGY, [full, trickle, none, none, none, none, none])
    assert [len(c) for c in out] == [0, 0, 0, 1, 0, 0, 0]  # the third silent window in a row, then never again
    (hold,) = out[3]
    assert hold.kind is CommandKind.HOLD and hold.rule == "labels-silent" and hold.traffic == {}
    assert (hold.window_start, hold.window_end) == (10_000, 40_000)  # the silent windows
    assert "labels silent" in hold.reason and "below 0.05 in 3 closed windows" in hold.reason
    assert "error-rate-vs-baseline" in hold.reason
    evidence = json.loads(hold.evidence)
    assert evidence["label_coverage"] == {"floor": 0.05, "windows": 3}
    assert [(w["window_start"], w["predictions"], w["labeled"], w["coverage"]) for w in evidence["coverage"]] == [
        (10_000, 1000, 20, 0.02), (20_000, 1000, 0, 0.0), (30_000, 1000, 0, 0.0)]
    assert state.silence_held and len(state.silent_windows) == 3  # bounded however long it lasts


def test_coverage_back_at_the_floor_ends_the_silence_and_the_next_one_holds_again() -> None:
    none, back = (1000, 0), (1000, 50)  # 50 / 1000 is the floor itself: back
    state, out = silence_run(TOPOLOGY, [none] * 4 + [back] + [none] * 3)
    assert [len(c) for c in out] == [0, 0, 1, 0, 0, 0, 0, 1]
    assert out[2][0].command_id != out[7][0].command_id and out[7][0].window_start == 50_000
    # A window without candidate predictions breaks the run but ends no silence: no second HOLD.
    state, out = silence_run(TOPOLOGY, [none] * 3 + [(0, 0)] + [none] * 3)
    assert [len(c) for c in out] == [0, 0, 1, 0, 0, 0, 0]
    state, out = silence_run(TOPOLOGY, [none, none, (0, 0), none, none, none])
    assert [len(c) for c in out] == [0, 0, 0, 0, 0, 1] and out[5][0].window_start == 30_000


def test_label_silence_hold_id_is_derived_again_after_a_restart_and_not_repeated_after_it() -> None:
    none = (1000, 0)
    _, straight = silence_run(TOPOLOGY, [none] * 3, now_ms=1)
    # A checkpoint taken before the HOLD: the restarted worker derives the same command (same id).
    before, _ = silence_run(TOPOLOGY, [none] * 2, now_ms=1)
    restored = PolicyState.restore(json.loads(json.dumps(before.snapshot())))
    assert restored == before
    after, again = silence_run(TOPOLOGY, [none], state=restored, first=2, now_ms=2)
    assert again[0][0].command_id == straight[2][0].command_id and again[0][0].issued_at == 2
    # A checkpoint taken after it: the silence stays announced.
    restored = PolicyState.restore(json.loads(json.dumps(after.snapshot())))
    assert silence_run(TOPOLOGY, [none] * 5, state=restored, first=3)[1] == [[]] * 5


def test_a_policy_snapshot_from_before_label_silence_restores() -> None:
    old = PolicyState().snapshot()
    del old["silent_windows"], old["silence_held"]
    assert PolicyState.restore(old) == PolicyState()


def test_label_silence_needs_a_check_on_labels_and_a_floor() -> None:
    none = [(1000, 0)] * 5
    latency_only = topology("  - {name: p99, metric: latency_p99_ms, max: 500}\n")
    assert silence_run(latency_only, none)[1] == [[]] * 5  # no check waits for labels: nothing to say
    off = topology("  - {name: err, metric: error_rate, max_degradation: 0.05}\n",
                   "decision: {label_coverage: {floor: 0}}\n")
    assert off.decision.label_coverage_floor == 0 and silence_run(off, none)[1] == [[]] * 5
    two = topology("  - {name: err, metric: error_rate, max_degradation: 0.05}\n",
                   "decision: {label_coverage: {floor: 0.5, windows: 2}}\n")
    assert [len(c) for c in silence_run(two, [(1000, 400)] * 3)[1]] == [0, 1, 0]


def test_a_silence_hold_takes_the_place_of_the_step_of_its_window() -> None:
    # Enough labels for the checks to PASS, yet below the floor: the window holds and does not step.
    t = topology("  - {name: err, metric: error_rate, max_degradation: 0.05}\n",
                 "rollout: {steps: [10, 100], windows: 3, samples: 10}\n"
                 "decision: {cooldown: 0s, label_coverage: {floor: 0.5, windows: 3}}\n")
    _, out = silence_run(t, [(1000, 300)] * 4)
    assert [[c.kind for c in cs] for cs in out] == [[], [], [CommandKind.HOLD], [CommandKind.PROMOTE]]


@pytest.mark.parametrize("decision, message", [
    ("decision: {label_coverage: {floor: 1.5}}\n", "decision.label_coverage.floor: expected a number between 0 and 1"),
    ("decision: {label_coverage: {windows: 0}}\n", "decision.label_coverage.windows: expected a whole number >= 1"),
    ("decision: {label_coverage: {flor: 0.1}}\n", "decision.label_coverage.flor: unknown key"),
])
def test_label_coverage_settings_are_validated(decision: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        topology("  - {name: err, metric: error_rate, max_degradation: 0.05}\n", decision)

import dataclasses
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mle_stream.core.events import CommandKind
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from mle_stream.core.policy import PolicyState, Verdict, WindowJudgement, decide, judge
from mle_stream.core.topology import parse_topology
from mle_stream.core.window_state import WindowState

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
    assert evidence["windows"][0]["candidate"]["samples"] == 200
    assert abs(evidence["windows"][0]["candidate"]["value"] - 60 / 200) < 1e-12  # 1 - accuracy


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
        state, again = decide(TOPOLOGY, state, judge(TOPOLOGY, i * 10_000, metrics(200, 16), metrics(200, 60)), now_ms=12345)
    assert again[0].command_id == first[0].command_id and again[0].issued_at != first[0].issued_at
    other_rule = dataclasses.replace(TOPOLOGY, rollback=dataclasses.replace(TOPOLOGY.rollback, name="other"))
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
    assert len(state.streak) == 2
    restored = PolicyState.restore(json.loads(json.dumps(state.snapshot())))
    assert restored == state
    # The next FAIL window rolls back from the restored state exactly as from the original one.
    nxt = judge(TOPOLOGY, 30_000, metrics(200, 16), metrics(200, 60))
    assert decide(TOPOLOGY, restored, nxt, now_ms=5) == decide(TOPOLOGY, state, nxt, now_ms=5)
    after, commands = decide(TOPOLOGY, restored, nxt, now_ms=5)
    assert after.rolled_back and len(commands) == 1
    assert PolicyState.restore(json.loads(json.dumps(after.snapshot()))) == after

judgements = st.builds(
    lambda start, verdict, b, c, nb, nc: WindowJudgement(start, start + 10_000, verdict, b, c, nb, nc,
                                                         f"reason ü {verdict.value}"),
    st.integers(0, 10**12), st.sampled_from(list(Verdict)),
    st.one_of(st.none(), st.floats(0, 1)), st.one_of(st.none(), st.floats(0, 1)),
    st.integers(0, 10**6), st.integers(0, 10**6),
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

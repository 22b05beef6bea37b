"""Shadow mode: the shadow's predictions paired with production's by prediction_id, scored on the
same labels, and judged; checked against numbers computed straight from the raw records."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import CommandKind, Label, Prediction
from mle_stream.core.shadow import AgreementMetrics, ShadowPairing, compare
from mle_stream.core.tasks import task_for
from mle_stream.core.topology import load_topology, parse_topology
from mle_stream.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
NOW = 10**12
SHADOW = parse_topology(
    'model: fraud\ntask: binary\nmode: shadow\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 10s, grace: 2s, retention: 1m}\nshadow: {pair_within: 5s}\n"
    "checks:\n  - {name: agree, metric: agreement, min: 0.9, min_samples: 50, consecutive: 1}\n"
)


def traffic(rng: random.Random, n: int, t0: int, flip: float, mirrored: float = 0.8):
    """Production (v1) answers every request; the shadow (v2) a `mirrored` share of them, under the same
    prediction_id, flipping the decision with probability `flip`. 90% of requests get a label."""
    production, shadow, labels = [], [], []
    for i in range(n):
        pid, ts = f"{t0}-{i}", t0 + rng.randrange(10_000)
        score = rng.random()
        production.append(Prediction(prediction_id=pid, model="fraud", version="1", timestamp=ts, score=score))
        if rng.random() < mirrored:
            other = 1 - score if rng.random() < flip else min(1.0, max(0.0, score + rng.gauss(0, 0.05)))
            # A little later than production's, within the same window.
            shadow.append(Prediction(prediction_id=pid, model="fraud", version="2",
                                     timestamp=min(ts + rng.randrange(300), t0 + 9_999), score=other))
        if rng.random() < 0.9:
            labels.append(Label(prediction_id=pid, model="fraud", timestamp=ts + 2000, label=rng.random() < 0.4))
    return production, shadow, labels


def expected(production, shadow, labels, version: str) -> dict[str, float]:
    """The window's numbers from the raw records: pairs by id, labels by id."""
    prod = {p.prediction_id: p for p in production}
    truth = {lab.prediction_id: lab.label for lab in labels}
    mine = production if version == "1" else shadow
    scored = [p for p in mine if p.prediction_id in truth]
    out = {"accuracy": accuracy_score([truth[p.prediction_id] for p in scored], [p.score >= 0.5 for p in scored]),
           "labeled": len(scored)}
    if version == "2":
        pairs = [(s, prod[s.prediction_id]) for s in shadow if s.prediction_id in prod]
        diffs = np.array([s.score - p.score for s, p in pairs])
        out |= {"paired": len(pairs), "agreement": np.mean([(s.score >= 0.5) == (p.score >= 0.5) for s, p in pairs]),
                "score_diff": diffs.mean(), "score_abs_diff": np.abs(diffs).mean(),
                "paired_rate": len(pairs) / len(shadow)}
    return out


def run(batches, topology=SHADOW, restore_every: int | None = None) -> dict:
    ev = ModelEvaluator(topology)
    for i, (kind, records) in enumerate(batches):
        if kind == "p":
            assert ev.add_predictions(records, NOW) == []
        else:
            assert ev.add_labels(records) == []
        if restore_every and i % restore_every == 0:
            ev = ModelEvaluator.restore(topology, json.loads(json.dumps(ev.snapshot())))
    out = ev.close_all(NOW)
    return {(w.version, w.window_start): w for w in out.windows if w.status == "CLOSED" and w.segment is None}


def arrivals(rng: random.Random, production, shadow, labels, size: int = 37):
    """Every record once, in batches of one kind, in a random order with labels mostly last; some
    labels come before their predictions, some shadows before their production twin."""
    early = [lab for lab in labels if rng.random() < 0.2]
    late = [lab for lab in labels if lab not in early]
    mixed = production + shadow
    rng.shuffle(mixed)
    batches = [("l", early[i:i + size]) for i in range(0, len(early), size)]
    for i in range(0, len(mixed), size):
        chunk = mixed[i:i + size]
        batches.append(("p", chunk))
    batches += [("l", late[i:i + size]) for i in range(0, len(late), size)]
    return batches


@pytest.mark.parametrize("restore_every", [None, 3])
def test_the_shadow_is_paired_and_scored_exactly_as_the_raw_records_say(restore_every) -> None:
    rng = random.Random(7)
    production, shadow, labels = traffic(rng, 600, 0, flip=0.2)
    windows = run(arrivals(rng, production, shadow, labels), restore_every=restore_every)
    for version in ("1", "2"):
        snap = windows[(version, 0)]
        want = expected(production, shadow, labels, version)
        assert snap.labeled == want["labeled"]
        assert snap.metrics["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
        if version == "2":
            for name in ("paired", "agreement", "score_diff", "score_abs_diff", "paired_rate"):
                assert snap.metrics[name] == pytest.approx(want[name], abs=1e-9), name
        else:
            assert snap.metrics["paired"] == 0 and snap.metrics["agreement"] is None


def test_a_duplicate_delivery_of_either_side_changes_nothing() -> None:
    rng = random.Random(3)
    production, shadow, labels = traffic(rng, 300, 0, flip=0.1)
    once = run([("p", production), ("p", shadow), ("l", labels)])
    twice = run([("p", production), ("p", shadow[:100]), ("p", shadow), ("p", production[50:]), ("l", labels),
                 ("l", labels[:40])])
    for key, snap in once.items():
        assert twice[key].metrics == snap.metrics and twice[key].labeled == snap.labeled


def test_a_disagreeing_shadow_fails_its_check_and_is_rolled_back() -> None:
    rng = random.Random(5)
    production, shadow, labels = traffic(rng, 400, 0, flip=0.5)
    ev = ModelEvaluator(SHADOW)
    ev.add_predictions(production + shadow, NOW)
    ev.add_labels(labels)
    ev.add_predictions([Prediction(prediction_id="tick", model="fraud", version="1", timestamp=13_000, score=0.5)], NOW)
    ev.add_labels([Label("tick", "fraud", 13_000, True)])  # both inputs past the window
    out = ev.advance(NOW)
    (rollback,) = out.commands
    assert rollback.kind is CommandKind.ROLLBACK and rollback.traffic == {"1": 100, "2": 0}
    check = json.loads(rollback.evidence)["windows"][0]["checks"][0]
    assert check["candidate"]["value"] == pytest.approx(expected(production, shadow, labels, "2")["agreement"])
    assert check["candidate"]["value"] < 0.9


def test_a_shadow_that_passes_its_gate_is_promoted_straight_to_100_percent() -> None:
    topology = parse_topology('model: fraud\ntask: binary\nmode: shadow\nbaseline: {version: "1"}\n'
                              'candidate: {version: "2"}\nwindows: {size: 10s, grace: 2s}\n'
                              "checks: [{name: agree, metric: agreement, min: 0.9, min_samples: 50}]\n"
                              "rollout: {windows: 1, samples: 100}\n")
    assert topology.rollout is not None and topology.rollout.steps == (0, 100)
    rng = random.Random(6)
    production, shadow, labels = traffic(rng, 400, 0, flip=0.0)
    ev = ModelEvaluator(topology)
    ev.add_predictions(production + shadow, NOW)
    ev.add_predictions([Prediction(prediction_id="tick", model="fraud", version="1", timestamp=13_000, score=0.5)], NOW)
    ev.labels_idle = True  # a shadow gate without labels: the worker closes by predictions alone
    (promote,) = ev.advance(NOW).commands
    assert promote.kind is CommandKind.PROMOTE and promote.traffic == {"1": 0, "2": 100}
    assert "in shadow (no live traffic)" in promote.reason


def test_pairs_compare_decisions_and_scores_per_task_by_hand() -> None:
    # Pending tuples: (pane, version, segments, output, decision).
    binary = [((0, "2", (None,), 0.9, True), (0, "1", (None,), 0.6, True)),
              ((0, "2", (None,), 0.2, False), (0, "1", (None,), 0.7, True))]
    agree, decided, diff, abs_diff = compare(task_for("binary"), binary)
    assert agree.tolist() == [True, False] and decided.all()
    assert diff == pytest.approx([0.3, -0.5]) and abs_diff == pytest.approx([0.3, 0.5])
    multi = [((0, "2", (None,), {"a": 2.0, "b": 2.0}, "a"), (0, "1", (None,), {"a": 0.9, "c": 0.1}, "a"))]
    agree, _, diff, abs_diff = compare(task_for("multiclass"), multi)
    # Normalised: shadow a .5 b .5, production a .9 c .1: TV = (0.4 + 0.5 + 0.1) / 2.
    assert agree.tolist() == [True] and math.isnan(diff[0]) and abs_diff[0] == pytest.approx(0.5)
    regression = [((0, "2", (None,), 3.0, None), (0, "1", (None,), 5.0, None))]
    agree, decided, diff, _ = compare(task_for("regression"), regression)
    assert not decided.any() and diff.tolist() == [-2.0]
    m = AgreementMetrics()
    m.update(*compare(task_for("regression"), regression))
    assert m.values() == {"paired": 1.0, "agreement": None, "score_abs_diff": 2.0, "score_diff": -2.0}


def test_agreement_state_merges_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    parts = []
    for _ in range(3):
        n = int(rng.integers(1, 50))
        parts.append((rng.random(n) < 0.7, rng.random(n) < 0.9, rng.normal(size=n), np.abs(rng.normal(size=n))))
    whole, merged = AgreementMetrics(), AgreementMetrics()
    whole.update(*(np.concatenate(c) for c in zip(*parts)))
    for part in parts:
        one = AgreementMetrics()
        one.update(*part)
        merged = merged.merge(AgreementMetrics.restore(json.loads(json.dumps(one.snapshot()))))
    for name, value in whole.values().items():
        assert merged.values()[name] == pytest.approx(value, abs=1e-12)


def test_an_unpaired_side_expires_after_pair_within_and_is_counted() -> None:
    pairing = ShadowPairing(within_ms=1000)
    p = (0, "1", (None,), 0.5, True)
    assert pairing.add(["a", "b"], [0, 500], [p, p], [False, True]) == []
    pairing.expire(1200)  # a (t=0) is past 1000 ms, b (t=500) is not
    assert pairing.unpaired == {"shadow": 0, "production": 1} and pairing.waiting == 1
    assert pairing.add(["b"], [600], [p], [False]) == [(p, p)]
    restored = ShadowPairing.restore(json.loads(json.dumps(pairing.snapshot())), lambda d: [])
    assert restored.unpaired == pairing.unpaired and restored.waiting == 0


def test_the_shadow_example_topology_is_valid_and_shadow_rules_are_checked() -> None:
    t = load_topology(REPO / "topologies" / "credit-risk-shadow.yaml")
    assert t.mode == "shadow" and t.rollout is not None and t.rollout.approval == (100,)
    assert {c.metric for c in t.checks} >= {"agreement", "error_rate"}
    base = 'model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    for text, message in [
        (base + "checks: [{name: a, metric: agreement, min: 0.9}]\n", "only a topology with mode: shadow has it"),
        (base + "shadow: {pair_within: 5s}\n", "shadow: is for mode: shadow"),
        (base + "mode: shadow\nrollout: {steps: [10, 100]}\n", "a shadow serves no traffic, so it has no steps"),
        (base + "mode: shadow\nchecks: [{name: a, metric: agreement, max_degradation: 0.1}]\n",
         "already compares the shadow with production"),
        (base.replace("binary", "regression") + "mode: shadow\nchecks: [{name: a, metric: agreement, min: 0.9}]\n",
         "a regression model has none of"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_topology(text)

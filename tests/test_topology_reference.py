"""The reference table of docs/topologies.md is the one the model renders, and it says what the
parser does: a file without a key gets the default the table shows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mle_stream.core.topology as topology
from mle_stream.core.checks import CheckRule, SequentialSpec
from mle_stream.core.drift.decision import DriftThresholds
from mle_stream.core.drift.live import DriftSettings
from mle_stream.core.topology import parse_topology, reference
from mle_stream.core.topology.model import (
    DecisionSettings,
    EstimateSettings,
    RetrainRule,
    RollbackShorthand,
    RolloutSteps,
    RoutingTarget,
    Topology,
)
from mle_stream.core.topology.values import format_duration

DOC = Path(__file__).resolve().parent.parent / "docs" / "topologies.md"
MINIMAL = 'model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'


def test_the_docs_table_is_the_generated_one() -> None:
    text = DOC.read_text(encoding="utf-8")
    in_doc = text[text.index(reference.START) + len(reference.START) + 1:text.index(reference.END)]
    assert in_doc == reference.table(), (
        "docs/topologies.md's reference table is stale: python -m mle_stream.core.topology.reference "
        "--write docs/topologies.md")


def test_a_row_reads_as_written_by_hand() -> None:
    rows = reference.table().splitlines()
    assert "| `windows.size` | duration | 1m | event time | window length |" in rows
    assert "| `checks[].consecutive` | int ≥ 1 | 3 (1 with `sequential`) | windows | FAIL windows in a row that " \
           "fire the action |" in rows
    assert rows[-1].startswith("| `ingest.*` | | | | how `mle-stream ingest` maps")


@pytest.mark.parametrize("ms, text", [(500, "500ms"), (30_000, "30s"), (60_000, "1m"), (5_400_000, "90m"),
                                      (604_800_000, "7d"), (0, "0ms")])
def test_durations_are_shown_as_a_topology_writes_them(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert topology.parse_duration_ms(text) == ms


def test_every_shown_default_is_what_a_file_without_the_key_gets() -> None:
    plain = parse_topology(MINIMAL + "rollout: {}\ndrift: {}\nestimates: {}\n")
    (shorthand,) = plain.checks
    limited, sequential = parse_topology(
        MINIMAL + "checks: [{name: c, metric: error_rate, max_degradation: 0.1}, "
                  "{name: s, metric: error_rate, sequential: {}}]\n").checks
    parsed: dict[type, Any] = {
        Topology: plain, DecisionSettings: plain.decision, RolloutSteps: plain.rollout, RetrainRule: plain.retrain,
        RoutingTarget: plain.routing, EstimateSettings: plain.estimates, DriftSettings: plain.drift,
        DriftThresholds: plain.drift.thresholds,
        CheckRule: limited, SequentialSpec: sequential.sequential,
        RollbackShorthand: SimpleNamespace(name=shorthand.name, max_increase=shorthand.max_degradation,
                                           consecutive_windows=shorthand.consecutive,
                                           min_samples=shorthand.min_samples)}
    compared = 0
    for e in reference.entries():
        if e.key.default is not None or e.default() == "required" or e.path == "checks[].max_degradation":
            continue  # shown in words, or set in the file above
        assert e.key.kind.show(getattr(parsed[e.model], e.field)) == e.default(), e.path
        compared += 1
    assert compared >= 50


def test_the_write_flag_replaces_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "topologies.md"
    doc.write_text(f"# T\n\nbefore\n\n{reference.START}\n| stale |\n{reference.END}\n\nafter\n")
    assert reference.main(["--write", str(doc)]) == 0
    assert doc.read_text() == f"# T\n\nbefore\n\n{reference.START}\n{reference.table()}{reference.END}\n\nafter\n"
    doc.write_text("no markers\n")
    assert reference.main(["--write", str(doc)]) == 2
    assert f"{doc} has no {reference.START}" in capsys.readouterr().err


def test_the_package_exports_what_it_lists() -> None:
    assert all(hasattr(topology, name) for name in topology.__all__)
    assert topology.TASKS == ("binary", "multiclass", "regression") and topology.ACTIONS == ("rollback", "hold")

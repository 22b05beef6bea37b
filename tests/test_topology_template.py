"""`mle-stream init-topology`: every file it writes is a topology the worker accepts, as asked."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from mle_stream import cli
from mle_stream.core.topology import ROUTING_BACKENDS, TASKS, parse_topology
from mle_stream.core.topology_template import TEMPLATE_MODES, topology_yaml


@pytest.mark.parametrize("task, mode, backend", list(itertools.product(TASKS, TEMPLATE_MODES, ROUTING_BACKENDS)))
def test_every_template_is_a_valid_topology(task: str, mode: str, backend: str) -> None:
    t = parse_topology(topology_yaml("churn-v2.model", task=task, mode=mode, backend=backend, baseline="3",
                                     candidate="challenger"), "generated.yaml")
    assert (t.model, t.task, t.mode, t.routing.backend) == ("churn-v2.model", task, mode, backend)
    assert (t.baseline_version, t.candidate_alias) == ("3", "challenger")
    assert [c.metric for c in t.checks] == ["serving_error_rate" if task == "regression" else "error_rate"]


def test_bad_choices_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="mode must be one of canary, ab"):
        topology_yaml("m", mode="shadow")
    with pytest.raises(ValueError, match="model must be"):
        topology_yaml("m: {x}")


def test_the_command_writes_a_file_validate_accepts_and_never_overwrites(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "churn.yaml"
    argv = ["init-topology", "--model", "churn", "--task", "multiclass", "--backend", "istio", "-o", str(out)]
    assert cli.main(argv) == 0
    assert cli.main(["validate", str(out)]) == 0
    assert "model churn, multiclass, canary" in capsys.readouterr().out
    before = out.read_text()
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before



@pytest.mark.parametrize("task", TASKS)
def test_the_template_writes_the_parsers_defaults_where_it_does_not_choose_its_own(task: str) -> None:
    bare = parse_topology(f'model: m\ntask: {task}\nbaseline: {{version: "1"}}\ncandidate: {{version: "2"}}\n'
                          "rollout: {}\n")
    written = parse_topology(topology_yaml("m", task=task))
    # The template's own choices: production-sized samples, a rule name per metric, a namespace.
    own = {"min_samples": bare.checks[0].min_samples, "name": bare.checks[0].name}
    assert replace(written.checks[0], **own) == bare.checks[0]
    assert written.routing == replace(bare.routing, namespace="ml")
    assert (written.threshold, written.max_clock_skew_ms, written.mode) == (bare.threshold, bare.max_clock_skew_ms,
                                                                            bare.mode)
    assert written.rollout is not None and bare.rollout is not None
    assert written.rollout.windows == bare.rollout.windows

"""`mle-stream init-topology`: every file it writes is a topology the worker accepts, as asked."""

from __future__ import annotations

import itertools
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

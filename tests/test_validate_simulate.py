"""`mle-stream validate --simulate`, in process: the warning and its fix, --json, exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mle_stream.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = """\
model: m
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 1m, grace: 0s, retention: 10m}
checks:
  - name: fixed
    metric: error_rate
    max: 0.16               # the simulated baseline's error rate is 0.151
    min_samples: 50
    consecutive: 1
"""
SMALL = ["--runs", "10", "--windows", "8", "--traffic", "600/m", "--share", "50%", "--label-delay", "1s..20s",
         "--unlabeled", "0%", "--degrade", "error_rate=2x"]


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    path = tmp_path / "fixed.yaml"
    path.write_text(TOPOLOGY)
    return path


def test_a_check_that_rolls_back_healthy_candidates_is_warned_about_with_its_fix(
        topology: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--simulate", *SMALL, str(topology)]) == 0
    out = capsys.readouterr().out
    assert "fixed (error_rate): false rollbacks" in out
    assert "warning: fixed rolls back" in out and "above alpha 0.05" in out
    assert "fix: use `sequential: {alpha: 0.05}` instead of fixed limits" in out


def test_strict_json_output_parses_and_exits_1_on_a_warning(topology: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--simulate", "--strict", "--json", *SMALL, str(topology)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"]["traffic_per_s"] == 10 and doc["scenario"]["degrade"] == ["error_rate=2x"]
    [check] = doc["topologies"][0]["checks"]
    assert check["check"] == "fixed" and check["warning"] is True
    assert check["false_rollback"]["runs"] == 10 and check["false_rollback"]["rate"] > 0.05
    assert check["fix"].startswith("use `sequential")
    low, high = check["false_rollback"]["ci95"]
    assert low <= check["false_rollback"]["rate"] <= high


def test_an_invalid_topology_exits_2_and_the_valid_ones_are_still_simulated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOPOLOGY.replace("task: binary", "task: ranking"))
    shadow = REPO / "topologies" / "credit-risk-shadow.yaml"
    fast = ["--runs", "4", "--windows", "4", "--traffic", "2/s"]
    assert main(["validate", "--simulate", *fast, str(bad), str(shadow)]) == 2
    captured = capsys.readouterr()
    assert "bad.yaml:2" in captured.err
    assert "the shadow answers every request (mirrored)" in captured.out
    assert "decisions-agree (agreement): false rollbacks" in captured.out
    assert "score-shift (score_abs_diff): false holds" in captured.out


def test_a_check_on_an_estimate_is_degraded_as_stated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "estimated.yaml"
    path.write_text(TOPOLOGY.split("checks:")[0] + "estimates: {reference_labels: 2000}\nchecks:\n"
                    "  - {name: estimated, metric: estimated_accuracy, max_degradation: 0.02, min_samples: 50,"
                    " consecutive: 1}\n")
    fast = ["--runs", "4", "--windows", "4", "--traffic", "600/m", "--share", "50%"]
    assert main(["validate", "--simulate", "--json", *fast, "--degrade", "estimated_accuracy=-0.03",
                 str(path)]) == 0
    [check] = json.loads(capsys.readouterr().out)["topologies"][0]["checks"]
    assert check["action"] == "hold" and check["degradation"] == "estimated_accuracy=-0.03"
    assert check["detection"]["hits"] == check["detection"]["runs"] == 4  # A/A: about 1 run in 6
    # An estimate cannot see flipped truths, nor fall below the majority class's share.
    assert main(["validate", "--simulate", *fast, "--degrade", "estimated_accuracy=0.7", str(path)]) == 2
    assert "out of the simulator's reach" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [(["--traffic", "fast"], "--traffic"),
                                          (["--label-delay", "1m..soon"], "duration"),
                                          (["--degrade", "roc_auc=worse"], "METRIC=CHANGE"),
                                          (["--baseline", "roc_auc=+0.1"], "--baseline roc_auc=+0.1")])
def test_a_bad_flag_says_what_was_expected(flags: list[str], named: str, topology: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--simulate", *flags, str(topology)]) == 2
    assert named in capsys.readouterr().err


def test_traffic_label_delays_and_unlabeled_share_are_measured_from_a_recording(
        topology: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 200 predictions over 99.5 s; 150 of them labeled, 3 s later (the rest never).
    predictions, labels = tmp_path / "p.jsonl", tmp_path / "l.jsonl"
    predictions.write_text("".join(json.dumps({"prediction_id": f"p{i}", "model": "m", "version": "1",
                                               "timestamp": 1_000_000 + 500 * i, "score": 0.3}) + "\n"
                                   for i in range(200)))
    labels.write_text("".join(json.dumps({"prediction_id": f"p{i}", "model": "m",
                                          "timestamp": 1_003_000 + 500 * i, "label": True}) + "\n"
                              for i in range(150)))
    assert main(["validate", "--simulate", "--json", "--runs", "2", "--windows", "2", "--share", "50%",
                 "--predictions", str(predictions), "--labels", str(labels), str(topology)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["measured"]["per_s"] == pytest.approx(200 / 99.5)
    assert doc["scenario"]["traffic_per_s"] == pytest.approx(200 / 99.5)
    assert doc["scenario"]["label_delay_ms"] == [3000, 3000]
    assert doc["scenario"]["unlabeled"] == pytest.approx(0.25)


def test_an_unreadable_recording_names_file_and_line(topology: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"prediction_id": "p1", "model": "m"}\nnot json\n')
    assert main(["validate", "--simulate", "--predictions", str(predictions), str(topology)]) == 2
    assert f"{predictions}:1" in capsys.readouterr().err


def test_the_numbers_do_not_depend_on_how_many_processes_run_them(topology: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Each run draws from its own seed, so a process pool (any size, any chunking) gives the same outcomes
    # as one process, the fix search included.
    docs = []
    for jobs in ("1", "2", "3"):
        assert main(["validate", "--simulate", "--json", "--jobs", jobs, *SMALL, str(topology)]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    assert docs[0]["topologies"][0]["checks"][0]["fix"]
    assert docs[0] == docs[1] == docs[2]
    assert main(["validate", "--simulate", "--jobs", "0", str(topology)]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def test_a_check_with_more_min_samples_than_its_windows_hold_is_said_to_never_judge(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 10 predictions/s, 1-minute windows, half to the candidate, every label at once: ~300 labeled
    # candidate predictions a window (less the 0.2% serving errors), under min_samples 400
    path = tmp_path / "thin.yaml"
    path.write_text(TOPOLOGY.replace("min_samples: 50", "min_samples: 400"))
    flags = ["--runs", "10", "--windows", "8", "--traffic", "600/m", "--share", "50%", "--label-delay", "0s",
             "--unlabeled", "0%", "--jobs", "1"]
    assert main(["validate", "--simulate", "--json", *flags, str(path)]) == 0
    [check] = json.loads(capsys.readouterr().out)["topologies"][0]["checks"]
    assert check["aa_window_inconclusive"] == 1.0 and check["false_rollback"]["hits"] == 0
    # the mean of 80 windows' Poisson(~299) counts: within 4 standard errors
    assert abs(check["aa_candidate_samples_per_window"] - 300 * 0.998) < 4 * math.sqrt(300 / 80)
    assert main(["validate", "--simulate", *flags, str(path)]) == 0
    out = capsys.readouterr().out
    assert "too few samples in 100.0%" in out
    assert "note: fixed had too few samples to judge 100% of the A/A windows (min_samples 400" in out
    path.write_text(TOPOLOGY)  # min_samples 50: every window judged
    assert main(["validate", "--simulate", *flags, str(path)]) == 0
    assert "too few samples" not in capsys.readouterr().out

"""`mle-stream profile build` end to end, and reference profiles stored in a real MLflow registry
(sqlite in tmp_path, versions registered from runs) and loaded back as the worker will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mle_stream.cli import main
from mle_stream.core.drift.profile import ReferenceProfile
from mle_stream.profiles import PROFILE_TAG, ProfileError, build_profile_from_file, load_from_mlflow, log_to_mlflow

MODEL = "fraud-detector"

# MLflow's own sqlite store trips a SQLAlchemy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _write_csv(path: Path, n: int = 2000) -> Path:
    rng = np.random.default_rng(7)
    lines = ["txn_id,amount,country,score,label"]
    for i in range(n):
        amount = "" if i % 50 == 0 else f"{rng.lognormal(3, 1):.4f}"
        lines.append(f"t{i},{amount},{rng.choice(['fr', 'de', 'us', 'uk', 'es'])},{rng.random():.6f},{i % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_help_explains_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "mle_stream", "profile", "build", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage: mle-stream profile build" in result.stdout
    for text in ("--exclude", "--bins", "--top-k", "--score-column", "--log-to-mlflow", "MLFLOW_TRACKING_URI"):
        assert text in result.stdout


def test_build_writes_the_profile_in_a_subprocess(tmp_path: Path) -> None:
    data = _write_csv(tmp_path / "train.csv")
    out = tmp_path / "ref.json"
    result = subprocess.run(
        [sys.executable, "-m", "mle_stream", "profile", "build", str(data), "--model", MODEL, "--version", "3",
         "-o", str(out), "--exclude", "txn_id", "--exclude", "label", "--bins", "20", "--top-k", "3"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert result.returncode == 0, result.stderr
    wrote = f"wrote {out}: model {MODEL} v3, 2000 rows, 1 numeric + 1 categorical features, score 'score'"
    assert wrote in result.stdout
    profile = ReferenceProfile.from_json(out.read_text())
    assert (profile.model, profile.version, profile.rows, profile.bins, profile.top_k) == (MODEL, "3", 2000, 20, 3)
    assert profile.skipped == {"txn_id": "excluded", "label": "excluded"}
    assert len(profile.features["country"].categories) == 3  # type: ignore[union-attr]
    assert profile.features["amount"].nan_count == 40  # type: ignore[union-attr]
    expected = build_profile_from_file(data, model=MODEL, version="3", exclude=["txn_id", "label"], bins=20, top_k=3)
    expected.created_at = profile.created_at
    assert profile == expected


def test_comma_separated_exclude_and_missing_score_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": i, "x": i * 0.5, "y": None}) + "\n" for i in range(10)))
    assert main(["profile", "build", str(data), "--model", "m", "--version", "1", "-o", str(tmp_path / "r.json"),
                 "--exclude", "id"]) == 0
    captured = capsys.readouterr()
    assert "has no column 'score'" in captured.err
    assert "skipped: id (excluded), y (no value: every row is missing)" in captured.out


@pytest.mark.parametrize(("content", "extra", "message"), [
    ("a,b\n1,2\n3\n", [], "train.csv:3: row has 1 fields"),
    ("a,b\n1,2\n", ["--exclude", "lable"], "excluded column(s) 'lable' not in the data"),
    ("a,b\n1,2\n", ["--bins", "0"], "--bins and --top-k must be >= 1"),
])
def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                        extra: list[str], message: str) -> None:
    data = tmp_path / "train.csv"
    data.write_text(content)
    out = tmp_path / "ref.json"
    assert main(["profile", "build", str(data), "--model", "m", "--version", "1", "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mle-stream profile: ") and message in err[0]
    assert not out.exists()


def test_nothing_to_do_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_csv(tmp_path / "train.csv", 10)
    assert main(["profile", "build", str(data), "--model", "m", "--version", "1"]) == 2
    assert "give -o FILE and/or --log-to-mlflow" in capsys.readouterr().err


# --- MLflow ------------------------------------------------------------------------------------

@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A sqlite MLflow with MODEL versions 1 and 2 registered from runs; the cwd stays empty."""
    from mlflow import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model(MODEL)
    for _ in range(2):
        run = client.create_run(experiment_id)
        client.log_text(run.info.run_id, "artifact_path: model\nflavors: {}\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    yield uri
    assert list(cwd.iterdir()) == []


def test_log_to_mlflow_then_load_returns_an_equal_profile(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    data = _write_csv(tmp_path / "train.csv", 500)
    profile = build_profile_from_file(data, model=MODEL, version="2", exclude=["txn_id", "label"])
    uri = log_to_mlflow(profile, tracking_uri)
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version(MODEL, "2")
    assert uri == f"runs:/{version.run_id}/mle-stream/reference_profile/{MODEL}/v2.json"
    assert version.tags[PROFILE_TAG] == uri
    assert load_from_mlflow(MODEL, "2", tracking_uri) == profile
    assert load_from_mlflow(MODEL, 2) == profile  # MLFLOW_TRACKING_URI, version as MLflow's int

    with pytest.raises(ProfileError, match=f"model '{MODEL}' version '1' has no reference profile"):
        load_from_mlflow(MODEL, "1", tracking_uri)
    with pytest.raises(ProfileError, match=f"model '{MODEL}' version '9' not found"):
        load_from_mlflow(MODEL, "9", tracking_uri)
    missing = build_profile_from_file(data, model=MODEL, version="9", exclude=["txn_id", "label"])
    with pytest.raises(ProfileError, match=f"model '{MODEL}' version '9' not found"):
        log_to_mlflow(missing, tracking_uri)


def test_cli_log_to_mlflow(tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_csv(tmp_path / "train.csv", 300)
    out = tmp_path / "ref.json"
    assert main(["profile", "build", str(data), "--model", MODEL, "--version", "1", "-o", str(out),
                 "--exclude", "txn_id,label", "--log-to-mlflow"]) == 0
    assert f"tag mle_stream.reference_profile on {MODEL} version 1" in capsys.readouterr().out
    assert load_from_mlflow(MODEL, "1", tracking_uri) == ReferenceProfile.from_json(out.read_text())
    assert main(["profile", "build", str(data), "--model", "nope", "--version", "1", "--log-to-mlflow",
                 "--exclude", "txn_id,label"]) == 2
    assert "model 'nope' version '1' not found" in capsys.readouterr().err


def test_the_worker_finds_the_profiles_its_topologies_need(tracking_uri: str, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from mle_stream.core.topology import parse_topology
    from mle_stream.profiles import profiles_for

    data = _write_csv(tmp_path / "train.csv", 300)
    profile = build_profile_from_file(data, model=MODEL, version="1", exclude=["txn_id", "label"])
    log_to_mlflow(profile, tracking_uri)
    text = f'model: {MODEL}\ntask: binary\nbaseline: {{version: "1"}}\ncandidate: {{version: "2"}}\n'
    with_drift, without = parse_topology(text + "drift: {}\n"), parse_topology(text)
    with caplog.at_level("WARNING"):
        found = profiles_for([with_drift], tracking_uri)
    assert found == {MODEL: {"1": profile}}
    assert f"drift of {MODEL} v2: no reference profile" in caplog.text  # v2 has none: said, not fatal
    assert profiles_for([without], tracking_uri) == {}  # no drift section: MLflow is not asked
    # A sqlite store that does not exist is not created by asking it.
    assert profiles_for([with_drift], f"sqlite:///{tmp_path}/nowhere.db") == {}
    assert not (tmp_path / "nowhere.db").exists()


def test_the_worker_resolves_aliases_in_the_mlflow_registry(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from mle_stream.aliases import resolve_with_mlflow
    from mle_stream.core.topology import parse_topology
    from mle_stream.errors import ConfigError

    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    t = parse_topology(f"model: {MODEL}\ntask: binary\nbaseline: {{alias: champion}}\ncandidate: "
                       f"{{alias: challenger}}\n")
    (resolved,) = resolve_with_mlflow({MODEL: t}, tracking_uri).values()
    assert (resolved.baseline_version, resolved.candidate_version) == ("1", "2")
    client.delete_registered_model_alias(MODEL, "challenger")
    with pytest.raises(ConfigError, match="candidate.alias 'challenger'.*its aliases: champion -> v1"):
        resolve_with_mlflow({MODEL: t}, tracking_uri)
    with pytest.raises(ConfigError, match="the MLflow store .* does not exist"):
        resolve_with_mlflow({MODEL: t}, f"sqlite:///{tmp_path}/nowhere.db")
    assert not (tmp_path / "nowhere.db").exists()

"""The demo scenario end to end over the broker: `mle-stream demo --json` as a user runs it, with
every claim of its summary checked again at the source (broker topic, MLflow store, git repo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_rolls_the_degraded_canary_back(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_WORKER_GROUP": topics.predictions + "worker", "MLE_ACTUATOR_GROUP": topics.predictions + "actuator"}
    env.pop("MLE_SIGNING_KEY", None)  # the demo makes its own key
    result = subprocess.run([sys.executable, "-m", "mle_stream", "demo", "--json", "--workdir", str(workdir),
                             "--degrade-after", "15"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads(result.stdout)
    assert "ROLLBACK fraud-detector v2" in result.stderr  # the readable timeline

    assert summary["rollback_issued"] is True and summary["ok"] is True
    assert 0 < summary["detected_after_s"] < 60
    assert summary["canary_events_before_rollback"] > summary["degraded_canary_events_before_rollback"] > 0
    assert summary["champion_alias"] == "1" and summary["challenger_alias"] is None
    assert summary["route_weights"] == {"1": 100, "2": 0}
    rollbacks = [c for c in summary["commands"] if c["kind"] == "ROLLBACK"]
    assert len(rollbacks) == 1
    evidence = json.loads(rollbacks[0]["evidence"])
    assert [w["verdict"] for w in evidence["windows"]] == ["FAIL"] * 3
    assert all(c["candidate"]["samples"] >= 100 and c["baseline"]["samples"] >= 100
               for w in evidence["windows"] for c in w["checks"])

    # The rollout event, read from the broker itself.
    events = [wire.decode_rollout_event(m.value()) for m in
              read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= 1, timeout_s=30)]
    assert [(e.action, e.status.value, e.command_id) for e in events] == [
        ("ROLLBACK", "APPLIED", rollbacks[0]["command_id"])]
    assert events[0].route_weights == {"1": 100, "2": 0} and events[0].champion == "1" and events[0].challenger is None

    # The MLflow registry, read with MLflow's own client.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    # MLflow 3 returns alias versions as integers.
    assert {k: str(v) for k, v in client.get_registered_model("fraud-detector").aliases.items()} == {"champion": "1"}
    tags = client.get_model_version("fraud-detector", "2").tags
    assert tags["mle.verdict"] == "FAIL" and tags["mle.command_id"] == rollbacks[0]["command_id"]

    # The GitOps repository: the manifest on HEAD and the commit that put it there.
    repo = workdir / "gitops"
    manifest = yaml.safe_load(subprocess.run(["git", "-C", str(repo), "show", "HEAD:routes/fraud-detector.yaml"],
                                             capture_output=True, text=True, check=True).stdout)
    assert manifest["kind"] == "HTTPRoute"
    refs = {r["name"]: r["weight"] for r in manifest["spec"]["rules"][0]["backendRefs"]}
    assert refs == {"fraud-detector-v1": 100, "fraud-detector-v2": 0}
    head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%B"], capture_output=True, text=True,
                          check=True).stdout
    assert rollbacks[0]["command_id"] in head
    assert len(subprocess.run(["git", "-C", str(repo), "log", "--format=%h"], capture_output=True, text=True,
                              check=True).stdout.split()) == 2  # the initial route, then the rollback

"""Operators' commands: `mle-stream command` (signed, to a file or onto the commands topic) and
`mle-stream actuate` (one command file applied to a real GitOps repository and a real MLflow store)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.actuator.gitops import GitOpsRouting
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import CommandKind
from mle_stream.core.signing import Signer
from mle_stream.errors import BrokerError, InvalidEvent
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.operator_commands import (
    CommandFileError,
    manual_command,
    publish_command,
    read_command_file,
    write_command_file,
)

REPO = Path(__file__).resolve().parent.parent
# One file, not the directory: other topologies there may route through backends this test has no access to.
TOPOLOGY = REPO / "topologies" / "fraud-detector-canary.yaml"
KEY = b"operator-test-key-0123456789abcd"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
MODEL = "fraud-detector"

# MLflow's own sqlite store trips a SQLAlchemy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def mle(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mle_stream", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLE_")}
    return {**env, "MLE_SIGNING_KEY": KEY.decode(), "MLFLOW_DISABLE_TELEMETRY": "true", "USER": "alice", **extra}


@pytest.mark.parametrize("kind, percent, traffic", [
    (CommandKind.ROLLBACK, None, {"1": 100, "2": 0}),
    (CommandKind.PROMOTE, None, {"1": 0, "2": 100}),
    (CommandKind.SET_TRAFFIC, 25, {"1": 75, "2": 25}),
    (CommandKind.APPROVE, 100, {"1": 0, "2": 100}),
])
def test_a_command_file_round_trips_and_verifies_only_with_its_key(
        tmp_path: Path, kind: CommandKind, percent: int | None, traffic: dict[str, int]) -> None:
    command = manual_command(kind, model=MODEL, baseline="1", candidate="2", reason="v2 regressed on precision",
                             operator="alice", signer=SIGNER, percent=percent, issued_at=1_700_000_000_123)
    path = tmp_path / "cmd.json"
    write_command_file(command, path)

    doc = json.loads(path.read_text())
    assert list(doc) == ["command_id", "kind", "model", "baseline_version", "candidate_version", "traffic",
                         "reason", "rule", "window_start", "window_end", "evidence", "policy_version", "issued_at",
                         "expires_at",
                         "signature"]  # every field of schemas/command.avsc, in its order
    assert doc["kind"] == kind.value and doc["traffic"] == traffic
    assert read_command_file(path) == command
    assert VERIFIER.verify(read_command_file(path))
    assert not Signer(HMAC_KEY_ID, b"another key".ljust(32, b"!")).verifier().verify(read_command_file(path))

    rule = f"manual:{kind.value.lower()}"
    assert (command.rule, command.policy_version) == (rule, "manual")
    assert command.window_start == command.window_end == command.issued_at == 1_700_000_000_123
    assert command.command_id == command_id(MODEL, "1", "2", kind, rule, 1_700_000_000_123, 1_700_000_000_123)
    assert json.loads(command.evidence) == {"operator": "alice", "reason": "v2 regressed on precision",
                                            "source": "mle-stream command"}


def test_two_operator_actions_get_two_ids() -> None:
    def at(millis: int) -> str:
        return manual_command(CommandKind.ROLLBACK, model=MODEL, baseline="1", candidate="2", reason="r",
                              operator="alice", signer=SIGNER, issued_at=millis).command_id

    assert at(1) != at(2)
    assert at(1) == at(1)


@pytest.mark.parametrize("kind, overrides, field, message", [
    (CommandKind.ROLLBACK, {"candidate": "1"}, "candidate", "two different versions"),
    (CommandKind.ROLLBACK, {"reason": "  "}, "reason", "non-empty"),
    (CommandKind.ROLLBACK, {"percent": 50}, "percent", "SET_TRAFFIC and APPROVE only"),
    (CommandKind.SET_TRAFFIC, {}, "percent", "from 1 to 99 for SET_TRAFFIC"),
    (CommandKind.SET_TRAFFIC, {"percent": 100}, "percent", "from 1 to 99 .* got 100"),
    (CommandKind.SET_TRAFFIC, {"percent": 0}, "percent", "from 1 to 99"),
    (CommandKind.APPROVE, {"percent": 101}, "percent", "from 1 to 100 for APPROVE"),
    (CommandKind.HOLD, {}, "kind", "not HOLD"),
])
def test_bad_arguments_say_what_was_expected(kind: CommandKind, overrides: dict[str, object], field: str,
                                            message: str) -> None:
    arguments: dict[str, object] = {"model": MODEL, "baseline": "1", "candidate": "2", "reason": "r",
                                    "operator": "alice", "signer": SIGNER, **overrides}
    with pytest.raises(InvalidEvent, match=message) as caught:
        manual_command(kind, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text.replace('"traffic"', '"trafic"'), r"cmd\.json: trafic: unknown field"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "reason"}),
     r"cmd\.json: reason: is missing"),
    (lambda text: text.replace('"ROLLBACK"', '"ROLLFORWARD"'), r"cmd\.json: kind: must be one of ROLLBACK"),
    (lambda text: text.replace('"2": 0', '"2": "none"'), r"cmd\.json: traffic\.2: must be a 32-bit integer"),
    (lambda text: text.replace('"model"', '"model" "x"'), r"cmd\.json:4: not JSON"),
    (lambda text: "[]", r"cmd\.json: must hold one JSON object"),
])
def test_a_broken_command_file_names_file_and_field(tmp_path: Path, edit: object, expected: str) -> None:
    path = tmp_path / "cmd.json"
    write_command_file(manual_command(CommandKind.ROLLBACK, model=MODEL, baseline="1", candidate="2",
                                      reason="r", operator="alice", signer=SIGNER), path)
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(CommandFileError, match=expected):
        read_command_file(path)
    with pytest.raises(CommandFileError, match=r"missing\.json: cannot read"):
        read_command_file(tmp_path / "missing.json")


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """A real sqlite MLflow store (v1 champion, v2 challenger) and a real GitOps checkout (90/10)."""
    from mle_stream.mlflow_registry import MlflowRegistry, register_demo_versions

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register_demo_versions(tracking, MODEL, 2, tmp_path / "artifacts") == ["1", "2"]
    registry = MlflowRegistry(tracking)
    registry.set_alias(MODEL, "champion", "1")
    registry.set_alias(MODEL, "challenger", "2")
    GitOpsRouting(tmp_path / "gitops", namespace="ml").init_route(MODEL, {"1": 90, "2": 10})
    return base_env(MLFLOW_TRACKING_URI=tracking)


def observed(tmp_path: Path, tracking: str) -> tuple[object, ...]:
    """Everything an actuation may change: the route, the git history, the aliases and the tags."""
    from mle_stream.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry(tracking)
    manifest = yaml.safe_load((tmp_path / "gitops" / "routes" / f"{MODEL}.yaml").read_text())
    commits = subprocess.run(["git", "-C", str(tmp_path / "gitops"), "log", "--format=%H"], capture_output=True,
                             text=True, check=True).stdout.split()
    return (manifest, commits, registry.aliases(MODEL), registry.version_tags(MODEL, "1"),
            registry.version_tags(MODEL, "2"))


def test_actuate_applies_a_command_file_once_and_rejects_a_tampered_one(tmp_path: Path,
                                                                        world: dict[str, str]) -> None:
    tracking = world["MLFLOW_TRACKING_URI"]
    made = mle("command", "rollback", "--model", MODEL, "--baseline", "1", "--candidate", "2",
               "--reason", "v2 precision down 30% on live traffic", "--out", str(tmp_path / "rollback.json"),
               env=world, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    command = read_command_file(tmp_path / "rollback.json")
    assert f"wrote {tmp_path / 'rollback.json'}" in made.stdout and command.command_id in made.stdout
    assert json.loads(command.evidence)["operator"] == "alice"  # $USER
    actuate = ("actuate", "--command", str(tmp_path / "rollback.json"), "-t", str(TOPOLOGY),
               "--gitops-repo", str(tmp_path / "gitops"))
    before = observed(tmp_path, tracking)

    tampered = tmp_path / "tampered.json"
    doc = json.loads((tmp_path / "rollback.json").read_text())
    tampered.write_text(json.dumps({**doc, "reason": "nothing to see here"}))
    result = mle(*actuate[:2], str(tampered), *actuate[3:], env=world, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    event = json.loads(result.stdout)
    assert event["status"] == "REJECTED" and "signature does not match" in event["details"]
    assert observed(tmp_path, tracking) == before

    result = mle(*actuate, "--dry-run", env=world, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert event["status"] == "DRY_RUN" and event["route_weights"] == {"1": 90, "2": 10}
    assert observed(tmp_path, tracking) == before

    result = mle(*actuate, env=world, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    event = wire.decode_rollout_event(result.stdout.encode())  # the JSON a consumer of rollout events reads
    assert (event.status.value, event.command_id, event.action) == ("APPLIED", command.command_id, "ROLLBACK")
    assert dict(event.route_weights) == {"1": 100, "2": 0} and (event.champion, event.challenger) == ("1", None)
    manifest, commits, aliases, _, tags_v2 = observed(tmp_path, tracking)
    assert len(commits) == len(before[1]) + 1 and aliases == {"champion": "1"}
    assert tags_v2["mle.command_id"] == command.command_id and tags_v2["mle.rule"] == "manual:rollback"
    assert [ref["weight"] for ref in manifest["spec"]["rules"][0]["backendRefs"]] == [100, 0]  # type: ignore[index]
    after = observed(tmp_path, tracking)

    result = mle(*actuate, env=world, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "SKIPPED_DUPLICATE"
    assert observed(tmp_path, tracking) == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "gitops", "mlflow.db", "rollback.json",
                                                         "tampered.json"]  # no stray mlflow.db in the cwd


def test_actuate_takes_the_route_from_flags_instead_of_a_topology(tmp_path: Path, world: dict[str, str]) -> None:
    made = mle("command", "set-traffic", "--model", MODEL, "--baseline", "1", "--candidate", "2", "--percent", "30",
               "--reason", "widen", "--out", str(tmp_path / "step.json"), env=world, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    by_flags = ("actuate", "--command", str(tmp_path / "step.json"), "--gitops-repo", str(tmp_path / "gitops"),
                "--backend", "gitops", "--namespace", "ml")
    result = mle(*by_flags, env=world, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["route_weights"] == {"1": 70, "2": 30}
    manifest = observed(tmp_path, world["MLFLOW_TRACKING_URI"])[0]
    assert [ref["weight"] for ref in manifest["spec"]["rules"][0]["backendRefs"]] == [70, 30]  # type: ignore[index]
    # Both ways at once, neither, or a flag the backend does not read: refused, saying why.
    for args, message in [((*by_flags, "-t", str(TOPOLOGY)), "by --topology or by flags"),
                          (by_flags[:5], "--topology FILE, or --backend"),
                          ((*by_flags, "--subset", "v{version}"), "routing.subset")]:
        result = mle(*args, env=world, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_actuate_refuses_a_broken_file_and_a_missing_store(tmp_path: Path) -> None:
    broken = tmp_path / "cmd.json"
    broken.write_text('{"kind": "ROLLBACK"}')
    env = base_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'nowhere.db'}")
    result = mle("actuate", "--command", str(broken), "-t", str(TOPOLOGY), "--gitops-repo",
                 str(tmp_path / "gitops"), env=env)
    assert result.returncode == 2 and f"{broken}: command_id: is missing" in result.stderr

    write_command_file(manual_command(CommandKind.ROLLBACK, model=MODEL, baseline="1", candidate="2", reason="r",
                                      operator="alice", signer=SIGNER), broken)
    result = mle("actuate", "--command", str(broken), "-t", str(TOPOLOGY), "--gitops-repo",
                 str(tmp_path / "gitops"), env=env)
    assert result.returncode == 2 and "nowhere.db does not exist (MLFLOW_TRACKING_URI)" in result.stderr
    assert not (tmp_path / "nowhere.db").exists()


def test_command_arguments_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    env = base_env(MLE_BOOTSTRAP_SERVERS="127.0.0.1:1")
    result = mle("command", "set-traffic", "--model", MODEL, "--baseline", "1", "--candidate", "2",
                 "--reason", "r", "--percent", "0", env=env)
    assert result.returncode == 2 and "percent: must be a whole number from 1 to 99 for SET_TRAFFIC" in result.stderr
    result = mle("command", "promote", "--model", MODEL, "--baseline", "2", "--candidate", "2", "--reason", "r",
                 env=env)
    assert result.returncode == 2 and "two different versions" in result.stderr
    # A container sets no USER: the operator is the OS user name (the password database's, here).
    no_user = {k: v for k, v in base_env().items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    result = mle("command", "rollback", "--model", MODEL, "--baseline", "1", "--candidate", "2", "--reason", "r",
                 "--out", str(tmp_path / "c.json"), env=no_user)
    assert result.returncode == 0, result.stderr
    operator = json.loads(read_command_file(tmp_path / "c.json").evidence)["operator"]
    assert operator == pwd.getpwuid(os.getuid()).pw_name
    result = mle("command", "rollback", "--model", MODEL, "--baseline", "1", "--candidate", "2", "--reason", "r",
                 env=base_env())
    assert result.returncode == 2 and "MLE_BOOTSTRAP_SERVERS is not set" in result.stderr


@pytest.mark.parametrize("command", ["command", "actuate"])
def test_help_has_an_example(command: str) -> None:
    result = mle(command, "--help", env=base_env())
    assert result.returncode == 0
    assert "examples:\n  mle-stream " in result.stdout and "MLE_SIGNING_KEY" in result.stdout


def test_an_unreachable_broker_fails_clearly() -> None:
    command = manual_command(CommandKind.ROLLBACK, model=MODEL, baseline="1", candidate="2", reason="r",
                             operator="alice", signer=SIGNER)
    with pytest.raises(BrokerError, match="127.0.0.1:1"):
        publish_command(command, "127.0.0.1:1", Topics(), timeout_s=2)


@pytest.mark.broker
def test_command_is_published_keyed_by_model_next_to_its_predictions(kafka_bootstrap: str, topics: Topics) -> None:
    from mle_stream.client import EvaluationClient

    # The default partitioner puts these two on different partitions of a 2-partition topic, so the
    # comparison below could not pass by accident.
    models = ["fraud-detector", "recommender"]
    env = base_env(MLE_BOOTSTRAP_SERVERS=kafka_bootstrap, **topic_env(topics))
    for model in models:
        result = mle("command", "approve", "--model", model, "--baseline", "1", "--candidate", "2", "--percent", "50",
                     "--reason", "25% step reviewed", "--by", "bob", env=env)
        assert result.returncode == 0, result.stderr
        assert f"published APPROVE of {model}" in result.stdout
    with EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=0) as client:
        for model in models:
            assert client.log_prediction({"prediction_id": uuid.uuid4().hex, "model": model, "version": "1",
                                          "timestamp": 1, "score": 0.5})

    out = read_until(kafka_bootstrap, [topics.commands, topics.predictions], lambda ms: len(ms) >= 4)
    commands = [m for m in out if m.topic() == topics.commands]
    predictions = {m.key(): m.partition() for m in out if m.topic() == topics.predictions}
    assert len(commands) == 2
    for message in commands:
        command = wire.decode_command(message.value())
        assert message.key() == command.model.encode()
        assert VERIFIER.verify(command)
        assert command.kind is CommandKind.APPROVE and dict(command.traffic) == {"1": 50, "2": 50}
        assert command.rule == "manual:approve" and json.loads(command.evidence)["operator"] == "bob"
        assert message.partition() == predictions[message.key()]
    assert len({m.partition() for m in commands}) == 2

"""GitOpsRouting against real git repositories in tmp_path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mle_stream.actuator import GitOpsRouting, RoutingBackend
from mle_stream.errors import ActuationError

MODEL = "fraud-detector"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def last_id(routing: GitOpsRouting, model: str) -> str | None:
    marker = routing.last_applied(model)
    return marker.command_id if marker else None


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD"))


@pytest.fixture
def routing(tmp_path: Path) -> GitOpsRouting:
    route = GitOpsRouting(tmp_path / "gitops")
    route.init_route(MODEL, {"1": 90, "2": 10})
    return route


def test_is_a_routing_backend(tmp_path: Path) -> None:
    assert isinstance(GitOpsRouting(tmp_path), RoutingBackend)


def test_init_route_creates_the_repository_and_an_httproute(tmp_path: Path) -> None:
    repo = tmp_path / "gitops"
    sha = GitOpsRouting(repo, namespace="ml", gateway="edge").init_route(MODEL, {"1": 90, "2": 10})

    assert git(repo, "rev-parse", "HEAD") == sha
    manifest = yaml.safe_load((repo / "routes" / f"{MODEL}.yaml").read_text())
    assert manifest["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert manifest["kind"] == "HTTPRoute"
    assert manifest["metadata"]["name"] == MODEL and manifest["metadata"]["namespace"] == "ml"
    assert manifest["spec"]["parentRefs"] == [{"name": "edge"}]
    assert manifest["spec"]["rules"][0]["backendRefs"] == [
        {"name": "fraud-detector-v1", "port": 80, "weight": 90},
        {"name": "fraud-detector-v2", "port": 80, "weight": 10},
    ]
    assert json.loads(manifest["metadata"]["annotations"]["mle-stream.io/versions"]) == {
        "fraud-detector-v1": "1",
        "fraud-detector-v2": "2",
    }
    assert "mle-stream.io/last-command-id" not in manifest["metadata"]["annotations"]


def test_set_weights_commits_the_manifest_with_the_command(routing: GitOpsRouting) -> None:
    repo = routing.repo_dir
    sha = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-123", reason="ROLLBACK: error rate 4%",
                              issued_at=1_700_000_000_123)

    assert git(repo, "rev-parse", "HEAD") == sha
    assert commit_count(repo) == 2
    message = git(repo, "log", "-1", "--format=%B")
    assert message.splitlines()[0] == f"route {MODEL}: 100% -> v1 (command cmd-123)"
    assert "ROLLBACK: error rate 4%" in message
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "mle-stream <mle-stream@localhost>"
    committed = yaml.safe_load(git(repo, "show", f"HEAD:routes/{MODEL}.yaml"))
    annotations = committed["metadata"]["annotations"]
    assert annotations["mle-stream.io/last-command-id"] == "cmd-123"
    assert annotations["mle-stream.io/last-reason"] == "ROLLBACK: error rate 4%"
    assert annotations["mle-stream.io/last-command-issued-at"] == "1700000000123"
    assert [ref["weight"] for ref in committed["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert routing.get_weights(MODEL) == {"1": 100, "2": 0}
    marker = routing.last_applied(MODEL)
    assert marker is not None and (marker.command_id, marker.issued_at) == ("cmd-123", 1_700_000_000_123)
    # A reset of the route forgets the command: the route no longer reflects it.
    routing.init_route(MODEL, {"1": 90, "2": 10})
    assert routing.last_applied(MODEL) is None
    assert "mle-stream.io/last-command-issued-at" not in yaml.safe_load(
        git(repo, "show", f"HEAD:routes/{MODEL}.yaml"))["metadata"]["annotations"]


def test_repeating_a_change_makes_no_empty_commit(routing: GitOpsRouting) -> None:
    first = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    again = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    assert again == first
    assert commit_count(routing.repo_dir) == 2
    assert routing.init_route(MODEL, {"1": 90, "2": 10}) != first  # a reset is a real change
    assert routing.init_route(MODEL, {"1": 90, "2": 10}) == git(routing.repo_dir, "rev-parse", "HEAD")
    assert commit_count(routing.repo_dir) == 3


def test_a_manifest_written_but_not_committed_is_committed_next_time(routing: GitOpsRouting) -> None:
    routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    # Simulate a crash between writing and committing: HEAD is behind the working tree.
    git(routing.repo_dir, "reset", "-q", "--soft", "HEAD~1")
    git(routing.repo_dir, "reset", "-q")
    assert routing.last_applied(MODEL) is None  # only what is committed counts

    routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    assert last_id(routing, MODEL) == "cmd-1"
    assert commit_count(routing.repo_dir) == 2


def test_human_edits_to_the_manifest_are_kept_and_understood(routing: GitOpsRouting) -> None:
    path = routing.manifest_path(MODEL)
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["hostnames"] = ["fraud.example.com"]
    manifest["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/score"}}]
    # A backend added by hand, without updating the versions annotation: found through the template.
    manifest["spec"]["rules"][0]["backendRefs"].append({"name": "fraud-detector-v3", "port": 8080, "weight": 0})
    path.write_text(yaml.safe_dump(manifest))
    git(routing.repo_dir, "commit", "-q", "-am", "add v3", "--author", "Human <h@example.com>")

    assert routing.get_weights(MODEL) == {"1": 90, "2": 10, "3": 0}
    routing.set_weights(MODEL, {"1": 80, "3": 20}, command_id="cmd-3", reason="canary v3")
    after = yaml.safe_load(path.read_text())
    assert after["spec"]["hostnames"] == ["fraud.example.com"]
    assert after["spec"]["rules"][0]["matches"] == manifest["spec"]["rules"][0]["matches"]
    assert after["spec"]["rules"][0]["backendRefs"] == [
        {"name": "fraud-detector-v1", "port": 80, "weight": 80},
        {"name": "fraud-detector-v3", "port": 8080, "weight": 20},
    ]
    assert routing.get_weights(MODEL) == {"1": 80, "3": 20}


def test_versions_come_from_the_annotation_when_names_do_not_follow_the_template(tmp_path: Path) -> None:
    routing = GitOpsRouting(tmp_path / "gitops", service_template="svc-{version}-{model}")
    routing.init_route(MODEL, {"1.2": 50, "blue": 50})
    assert routing.get_weights(MODEL) == {"1.2": 50, "blue": 50}
    assert routing.version_of_service(MODEL, "svc-blue-fraud-detector") == "blue"
    assert routing.version_of_service(MODEL, "other") is None


def test_a_hand_named_service_keeps_its_name_and_an_unknown_one_is_an_error(routing: GitOpsRouting) -> None:
    path = routing.manifest_path(MODEL)
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["rules"][0]["backendRefs"][1]["name"] = "fraud-canary"
    manifest["metadata"]["annotations"]["mle-stream.io/versions"] = json.dumps(
        {"fraud-detector-v1": "1", "fraud-canary": "2"}
    )
    path.write_text(yaml.safe_dump(manifest))
    git(routing.repo_dir, "commit", "-q", "-am", "rename the canary service")

    routing.set_weights(MODEL, {"1": 50, "2": 50}, command_id="c1", reason="r")
    refs = yaml.safe_load(path.read_text())["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("fraud-detector-v1", 50), ("fraud-canary", 50)]

    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["rules"][0]["backendRefs"].append({"name": "mystery", "port": 80, "weight": 0})
    path.write_text(yaml.safe_dump(manifest))
    git(routing.repo_dir, "commit", "-q", "-am", "add an unexplained backend")
    with pytest.raises(ActuationError, match=r"backendRef 'mystery' names no version"):
        routing.get_weights(MODEL)
    with pytest.raises(ActuationError, match=r"backendRef 'mystery' names no version"):
        routing.set_weights(MODEL, {"1": 100}, command_id="c2", reason="r")


def test_push_goes_to_origin(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    routing = GitOpsRouting(tmp_path / "gitops")
    routing.init_route(MODEL, {"1": 90, "2": 10})
    git(routing.repo_dir, "remote", "add", "origin", str(remote))
    branch = git(routing.repo_dir, "symbolic-ref", "--short", "HEAD")

    sha = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-9", reason="rollback")
    assert git(remote, "rev-parse", f"refs/heads/{branch}") == sha
    assert "cmd-9" in git(remote, "log", "-1", "--format=%s", branch)
    assert last_id(routing, MODEL) == "cmd-9"


def test_a_failed_push_is_an_error_and_not_applied_until_pushed(tmp_path: Path) -> None:
    routing = GitOpsRouting(tmp_path / "gitops")
    routing.init_route(MODEL, {"1": 90, "2": 10})
    missing = tmp_path / "no-such-remote.git"
    git(routing.repo_dir, "remote", "add", "origin", str(missing))

    with pytest.raises(ActuationError, match=r"(?s)git push .* failed .*committed locally") as caught:
        routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-7", reason="rollback")
    assert "no-such-remote.git" in str(caught.value)  # git's own stderr is in the message
    assert routing.last_applied(MODEL) is None  # committed but not pushed: not applied yet

    subprocess.run(["git", "init", "-q", "--bare", str(missing)], check=True)
    routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-7", reason="rollback")  # only pushes now
    assert commit_count(routing.repo_dir) == 2
    assert last_id(routing, MODEL) == "cmd-7"


def test_missing_routes_and_bad_names_are_errors_that_say_where(tmp_path: Path, routing: GitOpsRouting) -> None:
    with pytest.raises(ActuationError, match="no committed route manifest for model 'payments'.*init_route"):
        routing.get_weights("payments")
    with pytest.raises(ActuationError, match="init_route"):
        routing.set_weights("payments", {"1": 100}, command_id="c", reason="r")
    assert routing.last_applied("payments") is None
    with pytest.raises(ActuationError, match="cannot name an HTTPRoute"):
        routing.manifest_path("../../etc/passwd")
    with pytest.raises(ActuationError, match="add up to 90"):
        routing.set_weights(MODEL, {"1": 80, "2": 10}, command_id="c", reason="r")
    assert GitOpsRouting(tmp_path / "empty").last_applied(MODEL) is None


def test_a_broken_manifest_names_the_file(routing: GitOpsRouting) -> None:
    path = routing.manifest_path(MODEL)
    path.write_text("kind: HTTPRoute\nspec: [unclosed\n")
    git(routing.repo_dir, "commit", "-q", "-am", "break it")
    with pytest.raises(ActuationError, match=rf"{path} at HEAD is not valid YAML"):
        routing.get_weights(MODEL)


def test_bad_templates_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest_template"):
        GitOpsRouting(tmp_path, manifest_template="routes/all.yaml")
    with pytest.raises(ValueError, match="service_template"):
        GitOpsRouting(tmp_path, service_template="{model}-{color}")


def test_a_set_traffic_replayed_after_a_rollback_is_stale_across_a_restart(tmp_path: Path) -> None:
    from mle_stream.actuator import Actuator, InMemoryRegistry
    from mle_stream.actuator.service import epoch_ms
    from mle_stream.core.commands import command_id
    from mle_stream.core.events import Command, CommandKind, RolloutStatus
    from mle_stream.core.signing import Signer

    signer = Signer("worker", b"gitops-test-signing-key-32-bytes")
    now = epoch_ms()

    def command(kind: CommandKind, traffic: dict[str, int], issued_at: int) -> Command:
        return signer.sign(Command(
            command_id=command_id(MODEL, "1", "2", kind, "r", 0, issued_at), kind=kind, model=MODEL,
            baseline_version="1", candidate_version="2", traffic=traffic, reason="test", rule="r", window_start=0,
            window_end=issued_at, evidence="{}", policy_version="p", issued_at=issued_at))

    def registry() -> InMemoryRegistry:
        reg = InMemoryRegistry({MODEL: ["1", "2"]})
        reg.set_alias(MODEL, "champion", "1")
        return reg

    repo = tmp_path / "gitops"
    GitOpsRouting(repo).init_route(MODEL, {"1": 90, "2": 10})
    step = command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, now - 60_000)
    rollback = command(CommandKind.ROLLBACK, {"1": 100, "2": 0}, now - 30_000)
    reg = registry()
    assert Actuator(GitOpsRouting(repo), reg, signer.verifier()).handle(step).status is RolloutStatus.APPLIED
    assert Actuator(GitOpsRouting(repo), reg, signer.verifier()).handle(rollback).status is RolloutStatus.APPLIED
    head = git(repo, "rev-parse", "HEAD")

    # Restarted, on the same repository and a registry that lost its tags: the committed route alone knows.
    replay = Actuator(GitOpsRouting(repo), registry(), signer.verifier()).handle(step)
    assert replay.status is RolloutStatus.REJECTED and replay.details.startswith("STALE: "), replay.details
    assert rollback.command_id in replay.details and "signed by key worker" in replay.details
    assert git(repo, "rev-parse", "HEAD") == head
    assert GitOpsRouting(repo).get_weights(MODEL) == {"1": 100, "2": 0}
    # And the registry alone knows too, once the route was reset by hand.
    GitOpsRouting(repo).init_route(MODEL, {"1": 100})
    replay = Actuator(GitOpsRouting(repo), reg, signer.verifier()).handle(step)
    assert replay.status is RolloutStatus.REJECTED and "registered model's tag" in replay.details, replay.details
    assert GitOpsRouting(repo).get_weights(MODEL) == {"1": 100}

    expired = command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, now - signer.ttl_ms - 1)
    event = Actuator(GitOpsRouting(repo), registry(), signer.verifier()).handle(expired)
    assert event.status is RolloutStatus.REJECTED and event.details.startswith("STALE: expired"), event.details
    assert GitOpsRouting(repo).get_weights(MODEL) == {"1": 100}

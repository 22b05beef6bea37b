"""GitOpsRouting against real git repositories in tmp_path."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

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


# -- a shared branch on origin -------------------------------------------------------------------


class Shared:
    """A bare origin whose branch main holds the route, the actuator's clone and a human's clone."""

    def __init__(self, tmp_path: Path) -> None:
        self.origin = tmp_path / "origin.git"
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(self.origin))
        seed = tmp_path / "seed"
        git(tmp_path, "init", "-q", "-b", "main", str(seed))
        GitOpsRouting(seed).init_route(MODEL, {"1": 90, "2": 10})
        git(seed, "push", "-q", str(self.origin), "main")
        self.checkout = tmp_path / "gitops"
        self.human = tmp_path / "human"
        for clone in (self.checkout, self.human):
            git(tmp_path, "clone", "-q", str(self.origin), str(clone))
        git(self.human, "config", "user.name", "Human")
        git(self.human, "config", "user.email", "human@example.com")

    def on_origin(self, path: str) -> Any:
        return yaml.safe_load(git(self.origin, "show", f"main:{path}"))

    def hook(self, name: str, script: str) -> None:
        hook = self.origin / "hooks" / name
        hook.write_text("#!/bin/sh\n" + script)
        hook.chmod(0o755)


@pytest.fixture
def shared(tmp_path: Path) -> Shared:
    return Shared(tmp_path)


def test_a_change_is_pushed_on_top_of_what_others_pushed(shared: Shared) -> None:
    routing = GitOpsRouting(shared.checkout)
    # A commit of an earlier attempt that never reached origin: not applied, and dropped, never pushed.
    path = routing.manifest_path(MODEL)
    path.write_text(path.read_text().replace("weight: 10", "weight: 11").replace("weight: 90", "weight: 89"))
    git(shared.checkout, "commit", "-q", "-am", "unpushed attempt")
    assert routing.last_applied(MODEL) is None and routing.get_weights(MODEL) == {"1": 90, "2": 10}  # origin's
    # Meanwhile a person pushes a new file and hostnames in the route manifest.
    human_path = shared.human / "routes" / f"{MODEL}.yaml"
    manifest = yaml.safe_load(human_path.read_text())
    manifest["spec"]["hostnames"] = ["fraud.example.com"]
    human_path.write_text(yaml.safe_dump(manifest))
    (shared.human / "NOTES.md").write_text("owned by people\n")
    git(shared.human, "add", "-A")
    git(shared.human, "commit", "-q", "-m", "human: NOTES.md")
    git(shared.human, "push", "-q", "origin", "HEAD:main")

    sha = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-9", reason="rollback")
    assert git(shared.origin, "rev-parse", "main") == sha
    assert git(shared.origin, "log", "--format=%s", "main").splitlines() == [
        f"route {MODEL}: 100% -> v1 (command cmd-9)", "human: NOTES.md", f"init route {MODEL}: v1 90%, v2 10%"]
    assert git(shared.origin, "show", "main:NOTES.md") == "owned by people"
    pushed = shared.on_origin(f"routes/{MODEL}.yaml")
    assert pushed["spec"]["hostnames"] == ["fraud.example.com"]
    assert [ref["weight"] for ref in pushed["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert last_id(routing, MODEL) == "cmd-9"
    assert routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-9", reason="rollback") == sha  # no-op


def test_a_push_that_loses_a_race_is_redone_a_bounded_number_of_times(shared: Shared) -> None:
    # Another push lands while the actuator's is being received: a pre-receive hook makes a person's
    # commit through a nested push (outside the receiving push's quarantine; RACER keeps the nested
    # push's own hook out of it), as long as `races` says so.
    races = shared.origin / "races"
    races.write_text("1")
    shared.hook("pre-receive", f"""set -e
[ -z "$RACER" ] || exit 0
n=$(cat {races})
[ "$n" -gt 0 ] || exit 0
echo $((n - 1)) > {races}
unset GIT_DIR GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
cd {shared.human}
git fetch -q origin && git reset -q --hard origin/main
date +%s%N > racer.txt && git add racer.txt && git commit -q -m "racer $n"
RACER=1 git push -q origin HEAD:main >&2
""")
    routing = GitOpsRouting(shared.checkout, push_attempts=2)
    sha = routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="rollback")
    assert races.read_text().strip() == "0"
    assert git(shared.origin, "rev-parse", "main") == sha
    assert git(shared.origin, "log", "-2", "--format=%s", "main").splitlines()[1] == "racer 1"
    assert last_id(routing, MODEL) == "cmd-1"

    races.write_text("2")  # origin moves on every attempt: given up, to be delivered again later
    with pytest.raises(ActuationError, match=r"origin\.git \(branch main\): the branch moved between fetch and push "
                                             r"2 times") as caught:
        routing.set_weights(MODEL, {"1": 90, "2": 10}, command_id="cmd-2", reason="step")
    assert caught.value.transient
    assert git(shared.origin, "log", "-2", "--format=%s", "main").splitlines() == ["racer 1", "racer 2"]
    assert last_id(routing, MODEL) == "cmd-1"
    assert "cmd-2" not in git(shared.origin, "log", "--format=%s", "main")


def test_an_unreachable_origin_fails_transiently_and_the_command_applies_once_it_is_back(shared: Shared) -> None:
    from mle_stream.actuator import Actuator, InMemoryRegistry
    from mle_stream.actuator.service import epoch_ms
    from mle_stream.core.commands import command_id
    from mle_stream.core.events import Command, CommandKind, RolloutStatus
    from mle_stream.core.signing import Signer

    with socket.socket() as sock:  # a free port, nothing listening on it yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    git(shared.checkout, "remote", "set-url", "origin", f"git://127.0.0.1:{port}/origin.git")
    signer = Signer("worker", b"gitops-test-signing-key-32-bytes")
    issued_at = epoch_ms()
    rollback = signer.sign(Command(
        command_id=command_id(MODEL, "1", "2", CommandKind.ROLLBACK, "r", 0, issued_at), kind=CommandKind.ROLLBACK,
        model=MODEL, baseline_version="1", candidate_version="2", traffic={"1": 100, "2": 0}, reason="error rate",
        rule="r", window_start=0, window_end=issued_at, evidence="{}", policy_version="p", issued_at=issued_at))
    registry = InMemoryRegistry({MODEL: ["1", "2"]})
    actuator = Actuator(GitOpsRouting(shared.checkout), registry, signer.verifier())

    down = actuator.apply(rollback)
    assert down.event.status is RolloutStatus.FAILED and down.retry, down.event.details
    assert f"fetch of branch main at git://127.0.0.1:{port}/origin.git" in down.event.details
    assert "Connection refused" in down.event.details and "registry untouched" in down.event.details

    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
                               f"--base-path={shared.origin.parent}", "--export-all", "--enable=receive-pack",
                               str(shared.origin.parent)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.02)
        back = actuator.apply(rollback)
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert back.event.status is RolloutStatus.APPLIED, back.event.details
    pushed = shared.on_origin(f"routes/{MODEL}.yaml")
    assert pushed["metadata"]["annotations"]["mle-stream.io/last-command-id"] == rollback.command_id
    assert registry.aliases(MODEL)["champion"] == "1"


def test_an_origin_that_stops_answering_times_out_transiently(shared: Shared) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/origin.git"
        git(shared.checkout, "remote", "set-url", "origin", url)
        with pytest.raises(ActuationError, match=rf"fetch of branch main at {url} .*took longer than 0.5 s") as caught:
            GitOpsRouting(shared.checkout, timeout_s=0.5).set_weights(MODEL, {"1": 100}, command_id="c", reason="r")
    assert caught.value.transient


class _Refuses(http.server.BaseHTTPRequestHandler):
    """A Git host over HTTP that accepts no credentials."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_refused_credentials_a_refusing_server_and_a_missing_branch_are_not_transient(shared: Shared) -> None:
    routing = GitOpsRouting(shared.checkout)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{server.server_address[1]}/routes.git",  # no credentials at all
                    f"http://x-access-token:s3cret@127.0.0.1:{server.server_address[1]}/routes.git"):
            git(shared.checkout, "remote", "set-url", "origin", url)
            with pytest.raises(ActuationError,
                               match=r"fetch of branch main at http://.*refused .*credentials") as caught:
                routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
            assert not caught.value.transient
            assert "s3cret" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()

    git(shared.checkout, "remote", "set-url", "origin", str(shared.origin))
    shared.hook("pre-receive", "echo 'GH006: Protected branch update failed for refs/heads/main.' >&2\nexit 1\n")
    with pytest.raises(ActuationError, match=r"(?s)push of branch main at .*origin\.git.* was refused by the server .*"
                                             r"GH006.*pre-receive hook declined") as caught:
        routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    assert not caught.value.transient
    assert routing.last_applied(MODEL) is None

    git(shared.checkout, "checkout", "-q", "-b", "routes")
    with pytest.raises(ActuationError, match="origin has no branch routes; create it") as caught:
        routing.set_weights(MODEL, {"1": 100, "2": 0}, command_id="cmd-1", reason="r")
    assert not caught.value.transient


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

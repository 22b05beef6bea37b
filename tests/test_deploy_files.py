"""Checks of the deployment files: the Dockerfile and docker-compose.yml (k8s/: test_manifests.py).

No Docker engine runs here, so these tests read the files and check the properties that make them
work: every reference resolves (services, volumes), the worker and the actuator agree on what they
must agree on, and the topics Kafka gets are the ones mle-stream uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mle_stream.config import ACTUATOR_METRICS_PORT, WORKER_METRICS_PORT, Settings, Topics
from mle_stream.health import HEALTH_PATHS
from mle_stream.kafka import STATE_TOPIC_CONFIG
from mle_stream.keys import signer_from_settings
from probe_server import serving_probes

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

# What the worker and the actuator must agree on: a different key, broker or topic layout on one
# side makes every command unverifiable or unseen.
SHARED_SETTINGS = ("MLE_BOOTSTRAP_SERVERS", "MLE_SIGNING_KEY", "MLFLOW_TRACKING_URI", "MLE_TOPIC_PARTITIONS")
DEFAULT_VALUE = re.compile(r"\$\{(\w+):-([^}]*)\}")


# -- helpers -----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of Compose's two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume of a service, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            mounts.append((source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            mounts.append((volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
    return mounts


def _published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of "[ip:]host:container" (short syntax) or {published: ...} (long syntax)."""
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["published"]))
        else:
            parts = str(port).split("/")[0].split(":")
            ports.add(int(parts[-2] if len(parts) > 1 else parts[-1]))
    return ports


def _is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}"""
    out = {}
    for item in value.split(","):
        name, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def _dockerfile_uid() -> int:
    users = [arg for op, arg in _dockerfile_instructions() if op == "USER"]
    assert users, "the Dockerfile sets no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric uid so the kubelet can enforce runAsNonRoot"
    return int(uid)


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_builds_the_package_and_runs_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert re.search(r"apt-get install\b.*\bgit\b", runs), "git is needed by the GitOps backend"
    # What the worker and the actuator need, not the embedded broker nor the full MLflow server.
    assert re.search(r"pip install '\.\[worker,actuator\]'(\s|$)", runs)
    assert _dockerfile_uid() != 0
    assert ("ENTRYPOINT", '["mle-stream"]') in instructions
    # Everything the wheel is built from is copied (pyproject.toml names README.md as the readme,
    # and force-includes folders from the repo top into the package).
    copied = " ".join(arg for op, arg in instructions if op == "COPY")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force_included = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for needed in ("pyproject.toml", "README.md", "mle_stream", *force_included):
        assert needed in copied and (REPO / needed).exists(), needed


# -- docker-compose.yml ------------------------------------------------------------------------


def test_compose_references_only_defined_services_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for dependency in depends:
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            assert dependency != name
        for source, target, _ in _mounts(service):
            if _is_named_volume(source):
                assert source in declared, f"{name} mounts undeclared volume {source} at {target}"
                used.add(source)
            else:
                assert (REPO / source).exists(), f"{name} bind-mounts {source}, which does not exist"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_depends_on_conditions_can_be_met() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], \
                    f"{name} waits for {dependency} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                # a service Compose restarts never counts as completed
                assert services[dependency].get("restart", "no") == "no", dependency
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_worker_and_actuator_share_broker_key_registry_and_partitions() -> None:
    services = _compose()["services"]
    worker, actuator = _environment(services["worker"]), _environment(services["actuator"])
    for key in SHARED_SETTINGS:
        assert key in worker and worker[key] == actuator.get(key), \
            f"{key} differs: {worker.get(key)!r} vs {actuator.get(key)!r}"
    # The key comes from the host and Compose refuses to start without it.
    assert re.fullmatch(r"\$\{MLE_SIGNING_KEY:\?[^}]+\}", worker["MLE_SIGNING_KEY"]), worker["MLE_SIGNING_KEY"]
    settings = Settings.from_env({**worker, "MLE_SIGNING_KEY": "0123456789abcdef" * 4})
    assert signer_from_settings(settings).algorithm == "hmac-sha256"
    assert settings.bootstrap_servers, "an empty bootstrap would start an embedded broker in each container"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert "mlflow" in (services["actuator"].get("depends_on") or {})


def test_bootstrap_is_the_listener_kafka_advertises_to_containers() -> None:
    services = _compose()["services"]
    kafka = _environment(services["kafka"])
    listeners = _listeners(kafka["KAFKA_LISTENERS"])
    advertised = _listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    for name, (_, port) in advertised.items():
        assert listeners[name][1] == port, f"{name} is advertised on {port} but listens on {listeners[name][1]}"
    assert kafka["KAFKA_PROCESS_ROLES"].replace(" ", "") in ("broker,controller", "controller,broker")
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller not in advertised, "the controller listener is not for clients"
    node_id, voter = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node_id == kafka["KAFKA_NODE_ID"] and int(voter.rsplit(":", 1)[1]) == listeners[controller][1]

    container_side = {f"{host}:{port}" for host, port in advertised.values()}
    for name in ("worker", "actuator"):
        assert _environment(services[name])["MLE_BOOTSTRAP_SERVERS"] in container_side
    assert _environment(services["worker"])["MLE_BOOTSTRAP_SERVERS"].split(":")[0] in services
    # The host-side listener is published on the port it advertises.
    assert any(host == "localhost" and port in _published_ports(services["kafka"])
               for host, port in advertised.values())


def test_kafka_healthcheck_asks_the_broker() -> None:
    test = _compose()["services"]["kafka"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] in ("/opt/kafka/bin/kafka-topics.sh",
                                            "/opt/kafka/bin/kafka-broker-api-versions.sh")



@pytest.mark.parametrize("name, default_port", [("worker", WORKER_METRICS_PORT), ("actuator", ACTUATOR_METRICS_PORT)])
def test_compose_healthchecks_ask_the_probes_where_the_component_serves_them(name: str, default_port: int) -> None:
    service = _compose()["services"][name]
    command, env = _command(service), _environment(service)
    port = int(_option(command, "--metrics-port") if "--metrics-port" in command
               else env.get("MLE_METRICS_PORT", default_port))
    assert "--metrics-bind" not in command and env.get("MLE_METRICS_BIND",
                                                       "0.0.0.0") in ("0.0.0.0", "localhost", "127.0.0.1")
    check = service["healthcheck"]
    test = check["test"]
    assert test[:3] == ["CMD", "python", "-c"], "the image has Python but no curl"
    match = re.search(r"urlopen\('([^']+)'", test[3])
    assert match, test[3]
    url = urlsplit(match.group(1))
    assert (url.hostname, url.port) == ("localhost", port) and url.path in HEALTH_PATHS, match.group(1)
    assert int(check["start_period"].rstrip("s")) >= 30, "restoring the checkpoints takes a while"
    # The command itself tells a failing probe from a passing one (urlopen raises on a 503).
    for ok in (True, False):
        for served in serving_probes(ok):
            script = test[3].replace(f"localhost:{port}", f"127.0.0.1:{served}")
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
            assert (result.returncode == 0) == ok, result.stderr.decode()


def test_kafka_init_creates_exactly_the_topics_mle_stream_uses() -> None:
    services = _compose()["services"]
    init = services["kafka-init"]
    env = _environment(init)
    assert env["MLE_TOPICS"].split() == Topics().all()
    worker_settings = Settings.from_env({**_environment(services["worker"]), "MLE_SIGNING_KEY": "k" * 32})
    assert int(env["MLE_TOPIC_PARTITIONS"]) == worker_settings.partitions == 4
    script = " ".join(_command(init))
    # $$ is Compose's escape: the container's shell sees $MLE_TOPICS.
    assert "$$MLE_TOPICS" in script and '--partitions "$$MLE_TOPIC_PARTITIONS"' in script
    assert "--if-not-exists" in script, "a second `docker compose up` must not fail on existing topics"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The checkpoint topic, with the configuration the worker would give it itself.
    assert f"--topic {Topics().state} " in script
    for key, value in STATE_TOPIC_CONFIG.items():
        assert f"--config {key}={value}" in script


def test_topologies_are_mounted_read_only_where_both_components_read_them() -> None:
    services = _compose()["services"]
    for name in ("worker", "actuator"):
        topology = DEFAULT_VALUE.sub(r"\2", _option(_command(services[name]), "--topology"))
        mounts = [(s, t, ro) for s, t, ro in _mounts(services[name]) if s.rstrip("/") == "./topologies"]
        assert mounts, f"{name} does not mount ./topologies"
        _, target, read_only = mounts[0]
        assert read_only, f"{name} mounts ./topologies writable"
        assert topology == target or topology.startswith(target.rstrip("/") + "/"), (name, topology, target)
    assert _command(services["worker"])[0] == "worker" and _command(services["actuator"])[0] == "actuator"


def test_actuator_gitops_repo_lives_on_a_named_volume() -> None:
    actuator = _compose()["services"]["actuator"]
    repo = _option(_command(actuator), "--gitops-repo")
    assert repo == "/var/lib/mle-stream/gitops"
    assert any(_is_named_volume(s) and t == repo and not ro for s, t, ro in _mounts(actuator))
    # The directory exists in the image and belongs to its user, so the fresh volume does too.
    runs = " ".join(arg for op, arg in _dockerfile_instructions() if op == "RUN")
    assert f"mkdir -p {repo}" in runs and "chown -R mle:mle /var/lib/mle-stream" in runs


def test_mlflow_accepts_the_host_name_the_containers_use() -> None:
    services = _compose()["services"]
    uri = _environment(services["worker"])["MLFLOW_TRACKING_URI"]
    host_port = uri.split("://", 1)[1].rstrip("/")
    command = _command(services["mlflow"])
    allowed = _option(command, "--allowed-hosts").split(",")
    assert host_port in allowed, f"MLflow >= 3.5 answers 403 to Host: {host_port}"
    assert _option(command, "--backend-store-uri").startswith("sqlite:////mlflow/")
    assert any(s == "mlflow-data" and t == "/mlflow" for s, t, _ in _mounts(services["mlflow"]))
    assert "--serve-artifacts" in command and "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])

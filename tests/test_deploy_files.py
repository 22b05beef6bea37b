"""Checks of the deployment files: Dockerfile, docker-compose.yml and the Kustomize base in k8s/.

No Docker engine and no cluster run here, so these tests read the files and check the properties
that make them work: every reference resolves (services, volumes, ConfigMaps, the Secret, the
ServiceAccount), the worker and the actuator agree on what they must agree on, the topics Kafka
gets are the ones mle-stream uses, the actuator's rights are exactly the ones it needs, and every
Kubernetes manifest is a valid object of its kind for the official client's models (a wrong field
type or a misspelled field fails).
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import urlsplit

import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from mle_stream.config import ACTUATOR_METRICS_PORT, WORKER_METRICS_PORT, Settings, Topics
from mle_stream.core.topology import load_topologies
from mle_stream.health import HEALTH_PATHS, ActuatorHealth, start_server
from mle_stream.kafka import STATE_TOPIC_CONFIG
from mle_stream.keys import signer_from_settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

# What the worker and the actuator must agree on: a different key, broker or topic layout on one
# side makes every command unverifiable or unseen.
SHARED_SETTINGS = ("MLE_BOOTSTRAP_SERVERS", "MLE_SIGNING_KEY", "MLFLOW_TRACKING_URI", "MLE_TOPIC_PARTITIONS")
# Exactly what the routing adapters call: read one named object, patch it.
ACTUATOR_VERBS = {"get", "patch"}
ROUTING_RESOURCES = {
    ("gateway.networking.k8s.io", "httproutes"),
    ("networking.istio.io", "virtualservices"),
    ("serving.kserve.io", "inferenceservices"),
}
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


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _all_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _manifest_files():
        for doc in _documents(path):
            yield path, doc


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in _all_objects() if d.get("kind") == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))


def _first_difference(expected: Any, actual: Any, path: str = "") -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key not in actual:
                return f"{path}.{key}".lstrip(".") + ": not a field of the model (misspelled or misplaced?)"
            diff = _first_difference(expected[key], actual[key], f"{path}.{key}")
            if diff:
                return diff
        return ""
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual)):
            diff = _first_difference(e, a, f"{path}[{i}]")
            if diff:
                return diff
        return ""
    return "" if expected == actual else f"{path.lstrip('.')}: {expected!r} became {actual!r}"


def to_kubernetes_model(doc: dict[str, Any], model: str) -> Any:
    """Deserialize `doc` as the official client does an API response, and insist on a lossless
    round trip: the client raises on a wrong type but drops unknown fields silently, so a dropped
    field means a misspelled or misplaced one."""
    client = ApiClient()
    text = json.dumps(doc)
    if "content_type" in inspect.signature(client.deserialize).parameters:
        # pydantic-based clients: deserialize(response_text, response_type, content_type)
        obj = client.deserialize(text, model, "application/json")
    else:
        # older generated clients: deserialize(response, response_type), response.data is the body
        obj = client.deserialize(SimpleNamespace(data=text), model)
    diff = _first_difference(json.loads(text), client.sanitize_for_serialization(obj))
    if diff:
        raise ValueError(f"{model} {doc.get('metadata', {}).get('name')}: {diff}")
    return obj


def _model_name(doc: dict[str, Any]) -> str:
    group_version = doc["apiVersion"]
    version = group_version.rsplit("/", 1)[-1]
    assert version == "v1", f"{doc['kind']} {group_version}: only v1 kinds are mapped to client models here"
    return f"V1{doc['kind']}"


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
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                # a service Compose restarts never counts as completed
                assert services[dependency].get("restart", "no") == "no", dependency
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_worker_and_actuator_share_broker_key_registry_and_partitions() -> None:
    services = _compose()["services"]
    worker, actuator = _environment(services["worker"]), _environment(services["actuator"])
    for key in SHARED_SETTINGS:
        assert key in worker and worker[key] == actuator.get(key), f"{key} differs: {worker.get(key)!r} vs {actuator.get(key)!r}"
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
    assert any(host == "localhost" and port in _published_ports(services["kafka"]) for host, port in advertised.values())


def test_kafka_healthcheck_asks_the_broker() -> None:
    test = _compose()["services"]["kafka"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] in ("/opt/kafka/bin/kafka-topics.sh", "/opt/kafka/bin/kafka-broker-api-versions.sh")


def _serving_probes(ok: bool) -> Iterator[int]:
    """The port of a real metrics-and-probes server whose probes answer 200 (ok) or 503."""
    health = ActuatorHealth()
    if ok:
        health.loop_started()
        health.assigned([0])
    else:
        health.loop_stopped(RuntimeError("down"))
    server = start_server(CollectorRegistry(), 0, "127.0.0.1", health)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name, default_port", [("worker", WORKER_METRICS_PORT), ("actuator", ACTUATOR_METRICS_PORT)])
def test_compose_healthchecks_ask_the_probes_where_the_component_serves_them(name: str, default_port: int) -> None:
    service = _compose()["services"][name]
    command, env = _command(service), _environment(service)
    port = int(_option(command, "--metrics-port") if "--metrics-port" in command
               else env.get("MLE_METRICS_PORT", default_port))
    assert "--metrics-bind" not in command and env.get("MLE_METRICS_BIND", "0.0.0.0") in ("0.0.0.0", "localhost", "127.0.0.1")
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
        for served in _serving_probes(ok):
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


# -- k8s/ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_manifest_names_its_api_kind_and_name(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} without metadata.name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace"), f"{path.name}: the base sets no namespace for it"


def test_kustomization_lists_existing_files_and_not_the_secret_example() -> None:
    resources = _kustomization()["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists missing {resource}"
    assert SECRET_EXAMPLE.name not in resources, "the signing key must not be applied from Git"
    unlisted = {p.name for p in _manifest_files()} - set(resources) - {SECRET_EXAMPLE.name}
    assert not unlisted, f"manifests nobody applies: {unlisted}"
    assert "namespace" not in _kustomization(), "a kustomization namespace would move the Role out of the models' namespace"


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_a_valid_kubernetes_object(path: Path) -> None:
    for doc in _documents(path):
        obj = to_kubernetes_model(doc, _model_name(doc))
        assert obj.metadata.name == doc["metadata"]["name"]


def test_the_model_check_rejects_wrong_types_and_unknown_fields() -> None:
    good = _one("Deployment", "mle-stream-worker")
    to_kubernetes_model(good, "V1Deployment")

    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(ValueError):  # pydantic's ValidationError and the old client's int() both are
        to_kubernetes_model(wrong_type, "V1Deployment")

    misspelled = json.loads(json.dumps(good))
    misspelled["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRefs"] = {"name": "x"}
    with pytest.raises(ValueError, match="configMapRefs"):
        to_kubernetes_model(misspelled, "V1Deployment")

    no_name = json.loads(json.dumps(good))
    del no_name["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError):
        to_kubernetes_model(no_name, "V1Deployment")


def test_actuator_role_grants_exactly_the_routing_rights() -> None:
    role = _one("Role", "mle-stream-actuator")
    granted = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in value for value in rule.get(field, [])), f"wildcard in {field}: {rule}"
        assert set(rule["verbs"]) == ACTUATOR_VERBS, rule["verbs"]
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == ROUTING_RESOURCES


def test_role_binding_gives_the_role_to_the_actuator_only() -> None:
    role = _one("Role", "mle-stream-actuator")
    binding = _one("RoleBinding")
    account = _one("ServiceAccount")
    actuator = _one("Deployment", "mle-stream-actuator")
    worker = _one("Deployment", "mle-stream-worker")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert actuator["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert actuator["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert worker["spec"]["template"]["spec"].get("serviceAccountName") in (None, "default")
    assert worker["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_role_is_in_the_namespace_the_topologies_route_in(tmp_path: Path) -> None:
    config_map = _one("ConfigMap", "mle-stream-topologies")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    topologies = load_topologies([tmp_path])  # also: the example is a valid topology
    namespaces = {t.routing.namespace for t in topologies.values()}
    assert namespaces == {_one("Role", "mle-stream-actuator")["metadata"]["namespace"]}


def test_only_one_actuator_runs_at_a_time() -> None:
    spec = _one("Deployment", "mle-stream-actuator")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def _mounted_file(pod: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a path in the (only) container lies in, and the path inside that volume."""
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/") or path == mount["mountPath"]:
            assert mount.get("readOnly") is True, f"{path}: keys are mounted read-only"
            return volumes[mount["name"]], path[len(mount["mountPath"]):].strip("/")
    raise AssertionError(f"{path} is in no mounted volume")


def test_deployments_read_the_same_settings_and_their_keys_from_files() -> None:
    secret, verify_keys = _documents(SECRET_EXAMPLE)
    generators = {g["name"]: g for g in _kustomization()["configMapGenerator"]}
    for name in ("mle-stream-worker", "mle-stream-actuator"):
        pod = _one("Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        [source] = container["envFrom"]
        settings_name = source["configMapRef"]["name"]
        assert settings_name in generators
        assert generators[settings_name]["namespace"] == "mle-stream"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "MLE_SIGNING_KEY" not in env, "each signer has its own key pair: no shared secret"
        volume, inside = _mounted_file(pod, env["MLE_VERIFY_KEYS_DIR"])
        assert volume["configMap"]["name"] == verify_keys["metadata"]["name"] and inside == ""
        if name == "mle-stream-worker":
            volume, inside = _mounted_file(pod, env["MLE_SIGNING_KEY_FILE"])
            assert volume["secret"]["secretName"] == secret["metadata"]["name"] and inside in secret["stringData"]
            assert f"{inside.rsplit('.', 1)[0]}.pub" in verify_keys["data"], "the actuator must know the worker's key"
        else:
            assert "MLE_SIGNING_KEY_FILE" not in env, "the actuator signs nothing"
    literals = dict(item.split("=", 1) for item in generators["mle-stream-settings"]["literals"])
    assert set(literals) == set(SHARED_SETTINGS) - {"MLE_SIGNING_KEY"}, "keys belong in the Secret and ConfigMap"
    settings = Settings.from_env(literals)
    assert settings.bootstrap_servers and settings.mlflow_tracking_uri.startswith("http")
    compose_partitions = _environment(_compose()["services"]["kafka-init"])["MLE_TOPIC_PARTITIONS"]
    assert settings.partitions == int(compose_partitions)


@pytest.mark.parametrize("name", ["mle-stream-worker", "mle-stream-actuator"])
def test_pods_are_bounded_non_root_and_mount_what_they_declare(name: str) -> None:
    deployment = _one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        assert container["image"].startswith("ghcr.io/mle-stream/mle-stream:")
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert set(mounts) <= set(volumes), f"{name} mounts undeclared volumes {set(mounts) - set(volumes)}"
        topology = _option(container["args"], "--topology")
        assert mounts["topologies"]["mountPath"] == topology and mounts["topologies"]["readOnly"] is True
    config_maps = {v["configMap"]["name"] for v in volumes.values() if "configMap" in v}
    for config_map in config_maps:
        _one("ConfigMap", config_map)


@pytest.mark.parametrize("name, default_port", [("mle-stream-worker", WORKER_METRICS_PORT),
                                                ("mle-stream-actuator", ACTUATOR_METRICS_PORT)])
def test_probes_ask_the_health_endpoints_on_the_port_and_address_they_are_served(name: str, default_port: int) -> None:
    [container] = _one("Deployment", name)["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    served = int(_option(args, "--metrics-port")) if "--metrics-port" in args else default_port
    # The kubelet calls the pod's IP: a loopback bind would fail every probe.
    bind = _option(args, "--metrics-bind") if "--metrics-bind" in args else "0.0.0.0"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert bind == "0.0.0.0" and env.get("MLE_METRICS_BIND", "0.0.0.0") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"startupProbe": "/readyz", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for kind, path in expected.items():
        probe = container[kind]["httpGet"]
        assert ports.get(probe["port"], probe["port"]) == served, f"{name} {kind} asks port {probe['port']}"
        assert probe["path"] == path, f"{name} {kind}"
    # The paths are the probes', not the catch-all metrics: they answer JSON checks with 200 or 503.
    for ok in (True, False):
        for port in _serving_probes(ok):
            for path in set(expected.values()):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                        status, body = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, body = exc.code, exc.read()
                assert status == (200 if ok else 503) and "checks" in json.loads(body), path


def test_probe_timing_lets_a_worker_restore_and_restarts_only_on_a_confirmed_failure() -> None:
    def window(probe: dict[str, Any]) -> int:
        assert probe["timeoutSeconds"] < probe["periodSeconds"], probe
        return int(probe["periodSeconds"]) * int(probe["failureThreshold"])

    worker = _one("Deployment", "mle-stream-worker")["spec"]["template"]["spec"]["containers"][0]
    actuator = _one("Deployment", "mle-stream-actuator")["spec"]["template"]["spec"]["containers"][0]
    # Joining the group and restoring large checkpoints may take minutes before the first /readyz.
    assert window(worker["startupProbe"]) >= 300
    assert window(actuator["startupProbe"]) >= 60
    for container in (worker, actuator):
        # The rules wait out their own bounds; the kubelet only confirms, and a slow scrape is no failure.
        assert window(container["livenessProbe"]) >= 45
        assert container["livenessProbe"]["failureThreshold"] >= 3
        assert window(container["readinessProbe"]) >= 20


def test_actuator_gitops_repo_is_a_writable_volume() -> None:
    pod = _one("Deployment", "mle-stream-actuator")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    repo = _option(container["args"], "--gitops-repo")
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == repo]
    assert not mount.get("readOnly")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_builds_the_base() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    [role] = by_kind["Role"]
    assert role["metadata"]["namespace"] == _one("Role", "mle-stream-actuator")["metadata"]["namespace"]
    [settings] = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"].startswith("mle-stream-settings-")]
    for deployment in by_kind["Deployment"]:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"][0]["configMapRef"]["name"] == settings["metadata"]["name"]
        assert container["image"] == "ghcr.io/mle-stream/mle-stream:0.1.0"
        to_kubernetes_model(deployment, "V1Deployment")

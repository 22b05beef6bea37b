"""The Kubernetes manifests (k8s/) and docker-compose.yml, validated as a cluster and Compose would.

No cluster and no Docker engine run here. Instead: every kustomization is rendered with
`kubectl kustomize`, and every object it renders is validated against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: an unknown field fails, as `kubectl apply` would reject it);
docker-compose.yml is validated against the Compose Specification's JSON schema
(tests/data/compose-spec.json). Then the facts a real apply would catch, checked against their
sources: the environment the pods get is what mle-stream reads, every ConfigMap and Secret a pod
names is rendered or documented as one the user creates, the probes and Services ask the ports and
paths the processes serve, the actuator's Role grants what its routing adapters call, and the GitOps
overlay's init container produces a checkout the actuator commits and pushes routes from.

Custom resources: none is rendered (the model's deployment creates its route; the actuator only
patches it), and kubernetes-validate ships no schemas for them, so a rendered one fails the schema
test. The HTTPRoutes that matter, the documented example a model's deployment creates and the
manifest the GitOps actuator pushes, are validated against Gateway API's v1 HTTPRoute schema
(tests/data/httproute-v1.schema.json); of the CRD's CEL rules, only the backendRef port rule is
checked. The Istio DestinationRule of the ingest component is validated against Istio's
DestinationRule schema trimmed to the fields it uses (tests/data/destinationrule-v1-trimmed.schema.json).
Istio's VirtualService and KServe's InferenceService are not checked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mle_stream.actuator.gitops import GitOpsRouting
from mle_stream.actuator.kubernetes_routing import GatewayAPIRouting, IstioRouting, KServeRouting
from mle_stream.cli import parse_args
from mle_stream.config import ACTUATOR_METRICS_PORT, WORKER_METRICS_PORT, Settings
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError
from mle_stream.ingest import IngestServer, RunningServer
from mle_stream.kafka_security import KafkaSecurity
from probe_server import serving_probes

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
# Components (k8s/components/) are rendered within the kustomizations that use them.
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml")
                        if yaml.safe_load(p.read_text(encoding="utf-8"))["kind"] == "Kustomization")
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
HTTPROUTE_SCHEMA = Path(__file__).parent / "data" / "httproute-v1.schema.json"
DESTINATION_RULE_SCHEMA = Path(__file__).parent / "data" / "destinationrule-v1-trimmed.schema.json"
DESTINATION_RULE = K8S / "components" / "ingest" / "istio-destinationrule.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy-kubernetes.md"
COMPOSE_DOC = REPO / "docs" / "docker-compose.md"
# The oldest Kubernetes the manifests are meant for (the kubectl here is 1.32 too).
KUBERNETES_VERSION = "1.32"
NAMESPACE = "mle-stream"
DEFAULT, GITOPS, INGEST = K8S, K8S / "overlays" / "gitops", K8S / "overlays" / "ingest"
ROUTING_ADAPTERS = {"gateway-api": GatewayAPIRouting, "istio": IstioRouting, "kserve": KServeRouting}
STATUS_PORT_DEFAULT = 8077  # mle_stream/config.py STATUS_PORT


# -- rendering ---------------------------------------------------------------------------------


@functools.cache
def _rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: these tests render k8s/ with `kubectl kustomize`. Install kubectl "
                    ">= 1.27 (kustomize is built in): https://kubernetes.io/docs/tasks/tools/ (e.g. the "
                    "pkgs.k8s.io apt repository, then `apt-get install kubectl`)")
    built = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{built.stderr}"
    return tuple(d for d in yaml.safe_load_all(built.stdout) if d)


def _objects(directory: Path, kind: str) -> list[dict[str, Any]]:
    return [o for o in _rendered(directory) if o["kind"] == kind]


def _deployment(directory: Path, component: str) -> dict[str, Any]:
    [found] = [d for d in _objects(directory, "Deployment") if d["metadata"]["name"] == f"mle-stream-{component}"]
    return found


def _has(directory: Path, component: str) -> bool:
    return any(d["metadata"]["name"] == f"mle-stream-{component}" for d in _objects(directory, "Deployment"))


def _container(directory: Path, component: str) -> dict[str, Any]:
    [container] = _deployment(directory, component)["spec"]["template"]["spec"]["containers"]
    return container


def _option(args: list[str], name: str, default: str | None = None) -> str:
    if name not in args:
        assert default is not None, f"{name} missing from {args}"
        return default
    return args[args.index(name) + 1]


def _topologies(directory: Path) -> dict[str, Any]:
    """The topologies the rendered ConfigMap mounts, parsed as the components parse them."""
    [config_map] = [c for c in _objects(directory, "ConfigMap")
                    if c["metadata"]["name"].startswith("mle-stream-topologies")]
    return {name: parse_topology(text, source=name) for name, text in config_map["data"].items()}


def _pods(directory: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in _objects(directory, "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


kustomizations = pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO)))


# -- schemas -----------------------------------------------------------------------------------


@kustomizations
def test_every_rendered_object_is_valid_for_the_kubernetes_api(directory: Path) -> None:
    objects = _rendered(directory)
    assert {"Namespace", "Deployment", "Service", "ConfigMap"} <= {o["kind"] for o in objects}
    assert "Secret" not in {o["kind"] for o in objects}, "keys and tokens are created out of band, never from Git"
    for obj in objects:
        where = f"{directory.relative_to(REPO)}: {obj['kind']} {obj['metadata'].get('name')}"
        # No kustomization sets a namespace for all (it would move the Role out of the models' one).
        assert obj["kind"] == "Namespace" or obj["metadata"].get("namespace"), f"{where}: no namespace"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message} (a custom resource: vendor its CRD schema to check it)")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.absolute_path))}: {exc.message}")


def test_the_schema_check_rejects_unknown_fields_and_wrong_types() -> None:
    good = _deployment(DEFAULT, "worker")
    kubernetes_validate.validate(good, KUBERNETES_VERSION, strict=True)
    misspelled = json.loads(json.dumps(good))
    misspelled["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/livez"
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["replicas"] = "one"
    for bad in (misspelled, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_compose_file_is_valid_for_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8")))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)
    # The schema does catch what Compose would refuse: a misspelled key, a condition it does not know.
    misspelled = _compose()
    misspelled["services"]["worker"]["healthchek"] = misspelled["services"]["worker"].pop("healthcheck")
    unknown_condition = _compose()
    unknown_condition["services"]["worker"]["depends_on"]["mlflow"]["condition"] = "service_ready"
    for bad in (misspelled, unknown_condition):
        assert list(validator.iter_errors(bad))


@functools.cache
def _httproute_validator() -> jsonschema.Draft7Validator:
    """Gateway API's HTTPRoute schema, strict as `kubectl apply --validate=strict`: unknown fields fail."""
    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
        elif isinstance(node, list):
            node = [strict(v) for v in node]
        return node
    return jsonschema.Draft7Validator(strict(json.loads(HTTPROUTE_SCHEMA.read_text(encoding="utf-8"))))


def _httproute_errors(route: dict[str, Any]) -> list[str]:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _httproute_validator().iter_errors(route)]
    # The one CEL rule of the CRD these routes could break (the schema file has none of them).
    for i, rule in enumerate(route.get("spec", {}).get("rules", [])):
        for j, ref in enumerate(rule.get("backendRefs", [])):
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" and "port" not in ref:
                errors.append(f"spec.rules.{i}.backendRefs.{j}: Must have port for Service reference")
    return errors


def test_the_documented_route_is_a_valid_httproute_the_default_actuator_patches() -> None:
    [route] = [d for block in re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(encoding="utf-8"), re.DOTALL)
               for d in yaml.safe_load_all(textwrap.dedent(block))
               if isinstance(d, dict) and d.get("kind") == "HTTPRoute"]
    assert not _httproute_errors(route), _httproute_errors(route)
    [topology] = _topologies(DEFAULT).values()
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"] == {"name": topology.routing.name.format(model=topology.model),
                                 "namespace": topology.routing.namespace}
    services = [ref["name"] for ref in route["spec"]["rules"][0]["backendRefs"]]
    assert services == [topology.routing.service.format(model=topology.model, version=v)
                        for v in (topology.baseline_version, topology.candidate_version)]
    # The schema check can fail: a misspelled field, a weight that is not a number.
    misspelled = json.loads(json.dumps(route))
    misspelled["spec"]["rules"][0]["backendRef"] = misspelled["spec"]["rules"][0].pop("backendRefs")
    wrong_type = json.loads(json.dumps(route))
    wrong_type["spec"]["rules"][0]["backendRefs"][0]["weight"] = "ninety"
    no_port = json.loads(json.dumps(route))
    del no_port["spec"]["rules"][0]["backendRefs"][0]["port"]
    assert _httproute_errors(misspelled) and _httproute_errors(wrong_type) and _httproute_errors(no_port)


# -- what the pods are given -------------------------------------------------------------------


class _RecordingEnvironment(dict[str, str]):
    """An empty environment that remembers which variables were asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


@functools.cache
def _variables_mle_stream_reads() -> frozenset[str]:
    """Every variable Settings asks for, plus those the CLI and the health rules read by name
    (mle_stream.config.read)."""
    env = _RecordingEnvironment()
    Settings.from_env(env)
    by_name = set()
    read_by_name = re.compile(r'(?:(?:environ|env)(?:\.get\(|\[)|\bread\()\s*"([A-Z][A-Z0-9_]+)"')
    for source in (REPO / "mle_stream").rglob("*.py"):
        by_name |= set(read_by_name.findall(source.read_text("utf-8")))
    return frozenset(env.asked | by_name)


def _is_read(name: str) -> bool:
    if name.startswith("MLE_KAFKA_"):  # one per librdkafka property (docs/kafka-security.md): known ones only
        try:
            KafkaSecurity.from_env({name: "x"})
        except ConfigError as exc:
            return "unknown variable" not in str(exc)
        return True
    return name in _variables_mle_stream_reads()


@kustomizations
def test_every_variable_the_pods_set_is_one_its_reader_reads(directory: Path) -> None:
    assert {"MLE_BOOTSTRAP_SERVERS", "MLE_VERIFY_KEYS_DIR", "MLE_STATUS_PORT"} <= _variables_mle_stream_reads()
    config_maps = {c["metadata"]["name"]: c for c in _objects(directory, "ConfigMap")}
    for name, pod in _pods(directory):
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                names |= set(config_maps[source["configMapRef"]["name"]]["data"])
            unread = sorted(n for n in names if not _is_read(n))
            assert not unread, f"{name}/{container['name']} sets {unread}, which mle-stream never reads"
        for container in pod.get("initContainers", []):
            script = " ".join(container.get("args", []))
            for variable in container.get("env", []):
                assert f"${variable['name']}" in script or f"${{{variable['name']}}}" in script, (
                    f"{name}/{container['name']}: its script never uses {variable['name']}")
    # Both read the same settings (a different broker or partition count on one side loses commands),
    # which make sense to the reader and name a real broker.
    [worker_source] = _container(directory, "worker")["envFrom"]
    assert _container(directory, "actuator")["envFrom"] == [worker_source]
    if _has(directory, "ingest"):  # the same broker, topics and Kafka security as the worker
        assert _container(directory, "ingest")["envFrom"] == [worker_source]
    settings = Settings.from_env(config_maps[worker_source["configMapRef"]["name"]]["data"])
    assert settings.bootstrap_servers and settings.mlflow_tracking_uri.startswith("http")
    assert settings.partitions == int(_compose()["services"]["kafka-init"]["environment"]["MLE_TOPIC_PARTITIONS"])


def test_compose_sets_only_variables_mle_stream_reads() -> None:
    services = _compose()["services"]
    for name in ("worker", "actuator"):
        unread = sorted(n for n in services[name]["environment"] if not _is_read(n))
        assert not unread, f"compose service {name} sets {unread}, which mle-stream never reads"


def _documented_creations() -> dict[str, str]:
    """name -> the `kubectl create secret|configmap` command that docs/deploy-kubernetes.md gives for it."""
    text = DEPLOY_DOC.read_text(encoding="utf-8").replace("\\\n", " ")
    pattern = r"kubectl -n " + NAMESPACE + r" create (?:secret generic|configmap) ([\w-]+)[^\n]*"
    return {m.group(1): m.group(0) for m in re.finditer(pattern, text)}


@kustomizations
def test_every_configmap_and_secret_a_pod_names_is_rendered_or_created_as_documented(directory: Path) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]) for o in _rendered(directory)}
    documented = _documented_creations()
    for name, pod in _pods(directory):
        for volume in pod["volumes"]:
            if "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                ref = volume["configMap"]["name"] if kind == "ConfigMap" else volume["secret"]["secretName"]
                if (kind, ref) in rendered:
                    continue
                assert ref in documented, (f"{name} mounts {kind} {ref}: neither rendered nor created in "
                                           f"{DEPLOY_DOC.relative_to(REPO)}")
                expected = "create configmap" if kind == "ConfigMap" else "create secret generic"
                assert expected in documented[ref], documented[ref]
        for container in _all_containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    [config_map] = [c for c in _objects(directory, "ConfigMap") if c["metadata"]["name"] == ref["name"]]
                    assert ref["key"] in config_map["data"], f"{name}: {ref}"


def _file_in_volume(directory: Path, component: str, path: str) -> tuple[dict[str, Any], str]:
    """The volume a path of the component's container lies in, and the file name inside it."""
    pod = _deployment(directory, component)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in _container(directory, component)["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/") or path == mount["mountPath"]:
            assert mount.get("readOnly") is True, f"{path}: keys are mounted read-only"
            return volumes[mount["name"]], path[len(mount["mountPath"]):].strip("/")
    raise AssertionError(f"{path} is in no volume of the {component}")


@kustomizations
def test_the_keys_are_files_the_documented_commands_create(directory: Path) -> None:
    documented = _documented_creations()
    secret_example, verify_keys_example = yaml.safe_load_all((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    for component in ("worker", "actuator"):
        env = {e["name"]: e.get("value") for e in _container(directory, component)["env"]}
        assert "MLE_SIGNING_KEY" not in env, "each signer has its own key pair: no shared secret in the cluster"
        volume, inside = _file_in_volume(directory, component, env["MLE_VERIFY_KEYS_DIR"])
        assert inside == "" and volume["configMap"]["name"] == "mle-stream-verify-keys"
        if component == "worker":
            volume, key_file = _file_in_volume(directory, component, env["MLE_SIGNING_KEY_FILE"])
            secret = volume["secret"]["secretName"]
            assert f"--from-file={key_file}=" in documented[secret], documented[secret]
            assert secret_example["metadata"]["name"] == secret and key_file in secret_example["stringData"]
            assert f"{key_file.rsplit('.', 1)[0]}.pub" in verify_keys_example["data"]
            # the actuator must know the worker's public key, named by the same key id
            assert f"--from-file={key_file.rsplit('.', 1)[0]}.pub=" in documented["mle-stream-verify-keys"]
        else:
            assert "MLE_SIGNING_KEY_FILE" not in env, "the actuator signs nothing"


# -- routing and rights ------------------------------------------------------------------------


def test_the_default_routes_on_the_api_server_and_the_gitops_overlay_through_git() -> None:
    assert {t.routing.backend for t in _topologies(DEFAULT).values()} == {"gateway-api"}
    assert "--gitops-repo" not in _container(DEFAULT, "actuator")["args"]
    assert {t.routing.backend for t in _topologies(GITOPS).values()} == {"gitops"}
    # The two copies differ in their routing only, and the overlay's is the repository's own.
    default, gitops = _topologies(DEFAULT), _topologies(GITOPS)
    [gitops_text] = [c for c in _objects(GITOPS, "ConfigMap")
                     if c["metadata"]["name"].startswith("mle-stream-topologies")][0]["data"].values()
    assert gitops_text == (REPO / "topologies" / "fraud-detector-canary.yaml").read_text(encoding="utf-8")
    assert set(default) == set(gitops)
    for name in default:
        assert default[name].routing.namespace == gitops[name].routing.namespace
        # policy_version is a digest of the file's text: it differs with the routing section.
        same_routing = dataclasses.replace(default[name], routing=gitops[name].routing,
                                           policy_version=gitops[name].policy_version)
        assert same_routing == gitops[name]


@kustomizations
def test_the_actuator_may_get_and_patch_exactly_the_routes_its_topologies_name(directory: Path) -> None:
    # What the adapters call on the API server, read from their source: {verb}_namespaced_custom_object.
    source = (REPO / "mle_stream" / "actuator" / "kubernetes_routing.py").read_text(encoding="utf-8")
    verbs = set(re.findall(r"\.(\w+?)_namespaced_custom_object\(", source))
    assert verbs == {"get", "patch"}
    needed = {(t.routing.namespace, ROUTING_ADAPTERS[t.routing.backend].group,
               ROUTING_ADAPTERS[t.routing.backend].plural)
              for t in _topologies(directory).values() if t.routing.backend in ROUTING_ADAPTERS}
    granted = set()
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in _objects(directory, "Role")}
    assert not _objects(directory, "ClusterRole") and not _objects(directory, "ClusterRoleBinding")
    for binding in _objects(directory, "RoleBinding"):
        namespace = binding["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mle-stream-actuator",
                                        "namespace": NAMESPACE}]
        role = roles[(namespace, binding["roleRef"]["name"])]
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in value for value in rule[field]), f"wildcard in {field}: {rule}"
            assert set(rule["verbs"]) == verbs and "resourceNames" not in rule, rule
            granted |= {(namespace, g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == needed
    actuator = _deployment(directory, "actuator")["spec"]["template"]["spec"]
    assert actuator["automountServiceAccountToken"] is bool(needed), "an API token only where it is used"
    worker = _deployment(directory, "worker")["spec"]["template"]["spec"]
    assert worker["automountServiceAccountToken"] is False and "serviceAccountName" not in worker
    assert _deployment(directory, "actuator")["spec"]["replicas"] == 1
    assert _deployment(directory, "actuator")["spec"]["strategy"] == {"type": "Recreate"}, "one actuator at a time"


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_the_gitops_init_container_clones_a_checkout_the_actuator_pushes_routes_from(tmp_path: Path) -> None:
    pod = _deployment(GITOPS, "actuator")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    args = _container(GITOPS, "actuator")["args"]
    checkout = _option(args, "--gitops-repo")
    # The same volume at the same path in both containers, writable, and the credentials read-only.
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in _all_containers(pod)}
    assert mounts["clone-routes"][checkout]["name"] == mounts["actuator"][checkout]["name"]
    assert not mounts["actuator"][checkout].get("readOnly")
    [credentials] = [m for m in mounts["actuator"].values() if m["name"] == "git-credentials"]
    assert credentials["readOnly"] is True
    # The files the script reads are the keys the documented command puts in the Secret.
    [volume] = [v for v in pod["volumes"] if v["name"] == "git-credentials"]
    command = _documented_creations()[volume["secret"]["secretName"]]
    files = set(re.findall(re.escape(credentials["mountPath"]) + r"/(\w+)", init["args"][0]))
    assert files == {"username", "token"}
    for name in files:
        assert re.search(rf"--from-(?:literal|file)={name}=", command), f"{command} does not create {name}"

    # A config repository with its branch, as docs/deploy-kubernetes.md asks for.
    remote = tmp_path / "routes.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    _git(tmp_path, "clone", "-q", str(remote), str(seed))
    (seed / "README.md").write_text("routes\n")
    _git(seed, "add", "README.md")
    _git(seed, "commit", "-q", "-m", "start")
    _git(seed, "push", "-q", "origin", "HEAD:main")
    secret = tmp_path / "git-credentials"
    secret.mkdir()
    (secret / "username").write_text("x-access-token")
    (secret / "token").write_text("s3cret-token")

    # Run the init container's script, with the pod's paths pointing into tmp_path.
    local = tmp_path / "gitops"
    script = init["args"][0].replace(checkout, str(local)).replace(credentials["mountPath"], str(secret))
    gitops = {c["metadata"]["name"]: c for c in _objects(GITOPS, "ConfigMap")}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for variable in init["env"]:
        ref = variable["valueFrom"]["configMapKeyRef"]
        env[variable["name"]] = gitops[ref["name"]]["data"][ref["key"]]
    assert env["GITOPS_BRANCH"] == "main" and env["GITOPS_REPOSITORY"].startswith("https://")
    env["GITOPS_REPOSITORY"] = str(remote)
    assert init["command"] == ["/bin/sh", "-c"]
    for _ in range(2):  # a restarted init container keeps the checkout it made
        ran = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
    # The credential helper it configured answers with the Secret's files, for an https remote.
    filled = subprocess.run(["git", "credential", "fill"], cwd=local, input="protocol=https\nhost=git.example.com\n\n",
                            capture_output=True, text=True, timeout=30, env={**env, "GIT_TERMINAL_PROMPT": "0"})
    assert filled.returncode == 0, filled.stderr
    assert "username=x-access-token\n" in filled.stdout and "password=s3cret-token\n" in filled.stdout
    assert "s3cret-token" not in (local / ".git" / "config").read_text()

    # The actuator's backend, on that checkout: the route change reaches the config repository.
    [topology] = _topologies(GITOPS).values()
    target = topology.routing
    routing = GitOpsRouting(local, manifest_template=target.manifest, service_template=target.service,
                            namespace=target.namespace, gateway=target.gateway)
    routing.init_route(topology.model, {"1": 90, "2": 10})
    routing.set_weights(topology.model, {"1": 100, "2": 0}, command_id="c-1", reason="rollback")
    assert routing.last_applied(topology.model) is not None, "applied means pushed"
    pushed = yaml.safe_load(_git(remote, "show", f"main:{target.manifest.format(model=topology.model)}"))
    weights = {ref["name"]: ref["weight"] for ref in pushed["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"fraud-detector-v1": 100, "fraud-detector-v2": 0}
    assert not _httproute_errors(pushed), "Argo CD or Flux would refuse it: " + "; ".join(_httproute_errors(pushed))


# -- probes, ports, Services, pod security ------------------------------------------------------



@kustomizations
def test_probes_ports_and_services_match_what_the_processes_serve(directory: Path) -> None:
    served_paths = set()
    for component, metrics_default in (("worker", WORKER_METRICS_PORT), ("actuator", ACTUATOR_METRICS_PORT)):
        deployment = _deployment(directory, component)
        container = _container(directory, component)
        args = container["args"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        metrics = int(_option(args, "--metrics-port", str(metrics_default)))
        # The kubelet and Prometheus call the pod's IP: the metrics bind every interface by default.
        assert "--metrics-bind" not in args and ports["metrics"] == metrics
        if component == "worker":
            assert ports["status"] == int(_option(args, "--status-port", str(STATUS_PORT_DEFAULT)))
            assert _option(args, "--status-bind") == "0.0.0.0", "127.0.0.1 (the default) is unreachable from a Service"
        else:
            assert set(ports) == {"metrics"}
        for kind, path in (("startupProbe", "/readyz"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            probe = container[kind]["httpGet"]
            assert (probe["port"], probe["path"]) == ("metrics", path), f"{component} {kind}"
            served_paths.add(path)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == metrics
        assert annotations["prometheus.io/path"] == "/metrics"
    for service in _objects(directory, "Service"):
        matching = [d for d in _objects(directory, "Deployment")
                    if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, f"Service {service['metadata']['name']} selects {len(matching)} Deployments"
        [container] = matching[0]["spec"]["template"]["spec"]["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} == set(named), service["metadata"]["name"]
    ingest = {"mle-stream-ingest"} if _has(directory, "ingest") else set()
    assert {s["metadata"]["name"] for s in _objects(directory, "Service")} == {"mle-stream-worker",
                                                                               "mle-stream-actuator", *ingest}
    assert served_paths == {"/livez", "/readyz"}


class _AcceptingPublisher:
    """Stands in for the Kafka client, the ingest server's one boundary: accepts every record."""

    def log_prediction(self, p: Any) -> bool:
        return True

    def log_label(self, label: Any) -> bool:
        return True


def _ingest_service() -> dict[str, Any]:
    [service] = [s for s in _objects(INGEST, "Service") if s["metadata"]["name"] == "mle-stream-ingest"]
    return service


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_the_ingest_component_probes_and_exposes_what_mle_stream_ingest_serves() -> None:
    deployment, container = _deployment(INGEST, "ingest"), _container(INGEST, "ingest")
    args = parse_args(container["args"])
    assert args.command == "ingest" and args.bind == "0.0.0.0", "the kubelet and the logger call the pod's IP"
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", args.port)
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[kind]["httpGet"] == {"path": "/healthz", "port": "http"}, kind
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.port and annotations["prometheus.io/path"] == "/metrics"
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # Several replicas, and a drain or a rollout never takes the last one away.
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2 and deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    [budget] = _objects(INGEST, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["maxUnavailable"] < replicas
    # Both halves of a call come from one predictor pod's IP: ClientIP affinity keeps them on one replica.
    service = _ingest_service()
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", args.port, "http")]

    # The server the process runs, with the topologies the pod mounts, answers the probe and the scrape.
    ingest = IngestServer(_topologies(INGEST), _AcceptingPublisher())
    running = RunningServer(ingest, "127.0.0.1", 0)
    try:
        status, body = _get(f"http://127.0.0.1:{running.port}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(f"http://127.0.0.1:{running.port}/metrics")
        assert status == 200 and "mle_stream_ingest_unpaired_total" in body
        with pytest.raises(urllib.error.HTTPError):  # no catch-all route: /healthz answers because it exists
            _get(f"http://127.0.0.1:{running.port}/livez")
    finally:
        running.stop()


def test_the_istio_rule_hashes_the_header_kserve_sends_for_the_ingest_service() -> None:
    rule = yaml.safe_load(DESTINATION_RULE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(json.loads(DESTINATION_RULE_SCHEMA.read_text(encoding="utf-8")))
    assert not list(validator.iter_errors(rule)), [e.message for e in validator.iter_errors(rule)]
    misspelled = json.loads(json.dumps(rule))
    hashing = misspelled["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]
    hashing["httpHeader"] = hashing.pop("httpHeaderName")
    two_keys = json.loads(json.dumps(rule))
    two_keys["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["useSourceIp"] = True
    assert list(validator.iter_errors(misspelled)) and list(validator.iter_errors(two_keys))
    service = _ingest_service()
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert rule["spec"]["host"] == f"{name}.{namespace}.svc.cluster.local"
    assert rule["metadata"]["namespace"] == namespace
    # KServe's logger sends `Ce-Id` (pkg/logger/worker.go); header names are case-insensitive.
    assert rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"].lower() == "ce-id"
    # Istio hashes headers only on HTTP ports, and takes the protocol from the port's name.
    assert all(p["name"] == "http" or p["name"].startswith("http-") for p in service["spec"]["ports"])


def test_the_documented_logger_urls_reach_the_ingest_service() -> None:
    service = _ingest_service()
    expected = (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
                f"{service['spec']['ports'][0]['port']}/")
    for doc in (DEPLOY_DOC, REPO / "docs" / "ingest.md"):
        urls = re.findall(r"^\s*url: (\S+)", doc.read_text(encoding="utf-8"), re.MULTILINE)
        assert urls and set(urls) == {expected}, f"{doc.name}: logger.url {urls}, the Service is {expected}"


def test_the_probe_paths_answer_with_the_checks_not_the_metrics() -> None:
    # The catch-all metrics would answer 200 to any path: the probes answer JSON checks, 200 or 503.
    for ok in (True, False):
        for port in serving_probes(ok):
            for path in ("/livez", "/readyz"):
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

    worker, actuator = _container(DEFAULT, "worker"), _container(DEFAULT, "actuator")
    # Joining the group and restoring large checkpoints may take minutes before the first /readyz.
    assert window(worker["startupProbe"]) >= 300
    assert window(actuator["startupProbe"]) >= 60
    for container in (worker, actuator):
        # The rules wait out their own bounds; the kubelet only confirms, and a slow scrape is no failure.
        assert window(container["livenessProbe"]) >= 45 and container["livenessProbe"]["failureThreshold"] >= 3
        assert window(container["readinessProbe"]) >= 20


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert users and users[-1].split(":")[0].isdigit(), "the image needs a numeric USER for runAsNonRoot"
    return int(users[-1].split(":")[0])


@kustomizations
def test_pods_meet_the_restricted_pod_security_standard_and_are_bounded(directory: Path) -> None:
    [namespace] = _objects(directory, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in _pods(directory):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == _dockerfile_uid()
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"] for v in pod["volumes"]}
        assert all(set(v) & {"configMap", "secret", "emptyDir"} for v in pod["volumes"]), f"{name}: volume types"
        for container in _all_containers(pod):
            where = f"{name}/{container['name']}"
            assert container["image"].startswith("ghcr.io/mle-stream/mle-stream:"), where
            assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                    "capabilities": {"drop": ["ALL"]}}, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
            assert {m["name"] for m in container["volumeMounts"]} <= volumes, where
            if container in pod["containers"]:
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                topology = _option(container["args"], "--topology")
                assert mounts[topology]["readOnly"] is True, where
                # Writable places on the read-only root: $HOME (the image's user's) and /tmp.
                assert {"/home/mle", "/tmp"} <= set(mounts), where


# -- docker-compose.yml ------------------------------------------------------------------------


def _published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of "ip:host:container" entries."""
    out = {}
    for entry in service.get("ports", []):
        address, host, container = str(entry).split(":")
        out[int(container)] = (address, int(host))
    return out


def test_compose_publishes_the_status_page_and_both_metrics_on_loopback() -> None:
    services = _compose()["services"]
    worker, actuator = services["worker"], services["actuator"]
    status = int(_option(worker["command"], "--status-port", str(STATUS_PORT_DEFAULT)))
    assert _option(worker["command"], "--status-bind") == "0.0.0.0", "127.0.0.1 in a container: unreachable"
    expected = {"worker": {status: ("127.0.0.1", 8077), WORKER_METRICS_PORT: ("127.0.0.1", 9464)},
                "actuator": {ACTUATOR_METRICS_PORT: ("127.0.0.1", 9465)}}
    for name, service in (("worker", worker), ("actuator", actuator)):
        assert "--metrics-port" not in service["command"] and "MLE_METRICS_PORT" not in service["environment"]
        assert _published(service) == expected[name], name
    # No two services publish the same host port.
    host_ports = [hp for s in services.values() for _, hp in _published(s).values()]
    assert len(host_ports) == len(set(host_ports))


def test_compose_starts_the_worker_and_actuator_after_kafka_and_mlflow_are_healthy() -> None:
    services = _compose()["services"]
    for name in ("worker", "actuator"):
        depends = services[name]["depends_on"]
        for dependency in ("kafka", "mlflow"):
            assert depends[dependency] == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            check = services[dependency]["healthcheck"]
            assert check["test"][0] == "CMD" and check["retries"] >= 3 and "start_period" in check
        assert depends["kafka-init"] == {"condition": "service_completed_successfully"}


def _shell_blocks(doc: Path) -> list[str]:
    return re.findall(r"```(?:sh|bash|console)\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL)


def test_the_compose_walkthrough_names_what_the_files_define() -> None:
    services = _compose()["services"]
    blocks = _shell_blocks(COMPOSE_DOC)
    commands = "\n".join(blocks)
    assert "docker compose up" in commands
    for service in re.findall(r"docker compose (?:exec|logs|run)(?: -\w+| --\w[\w-]*)* ([\w-]+)", commands):
        assert service in services, f"{COMPOSE_DOC.name} names service {service!r}, not in docker-compose.yml"
    published = {hp for s in services.values() for _, hp in _published(s).values()} | {5000, 9094}
    for port in map(int, re.findall(r"localhost:(\d+)", COMPOSE_DOC.read_text(encoding="utf-8"))):
        assert port in published, f"{COMPOSE_DOC.name} sends the reader to localhost:{port}, which nothing publishes"
    # The Python it pipes into a container compiles, and what it imports exists.
    scripts = re.findall(r"python - <<'EOF'\n(.*?)\nEOF", commands, re.DOTALL)
    assert scripts, "the walkthrough registers the versions and sends traffic with Python in a container"
    for script in scripts:
        compile(script, COMPOSE_DOC.name, "exec")
        for module, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)$", script, re.MULTILINE):
            imported = __import__(module, fromlist=["_"])
            for name in names.split(","):
                assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"
        for path in re.findall(r'"(/(?:etc|var)/[^"]+)"', script):
            mounted = [t for s in ("worker", "actuator") for t in (v.split(":")[1] for v in services[s]["volumes"])]
            assert any(path.startswith(t) for t in mounted), f"{path} is in no volume of the worker or actuator"

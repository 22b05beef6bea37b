"""The Kubernetes routing adapters over real HTTP: the official client against kmock's emulator.

kmock's KubernetesEmulator is an in-memory API server (create, get, patch of custom objects). Two
things a real API server does and it does not are added here, because the adapters rely on them:
every write gets a new metadata.resourceVersion, and a patch that carries a stale resourceVersion
is refused with 409 Conflict. The emulator merges patches as plain dicts (lists replaced), which is
what the adapters' JSON merge patches mean on a cluster too.

The emulator runs its aiohttp server on an event loop in a background thread; the adapters (like
the actuator) are synchronous and call it from the test thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from kmock import KubernetesEmulator, KubernetesError, Object, Response, Server, action, resource
from kubernetes import client

from mle_stream.actuator import Actuator, InMemoryRegistry
from mle_stream.actuator.kubernetes_routing import GatewayAPIRouting, IstioRouting, KServeRouting, ObjectRouting
from mle_stream.actuator.ports import RoutingBackend
from mle_stream.actuator.service import epoch_ms
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.errors import ActuationError, ConfigError
from mle_stream.keys import HMAC_KEY_ID

NS = "ml"
MODEL = "fraud"
KEY = b"k8s-test-key-0123456789abcdef012"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
LAST = "mle-stream.io/last-command-id"
REASON = "mle-stream.io/last-reason"
ISSUED_AT = "mle-stream.io/last-command-issued-at"
ROLLBACK = {"1": 100, "2": 0}
FAST = {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.02, "timeout_s": 5.0}


@attrs.define(kw_only=True)
class VersionedEmulator(KubernetesEmulator):
    """kmock's emulator plus resourceVersion: bumped on every patch, a stale one in a patch -> 409.

    `concurrent_writes` simulates another writer: each patch first applies the next queued change
    (as if it had landed just before), so the adapter's patch carries a stale resourceVersion.
    """

    concurrent_writes: list[Callable[[Object], None]] = attrs.field(factory=list)
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(100))

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action == action.UPDATE and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                stored = self.objects[key]
                if self.concurrent_writes:
                    self.concurrent_writes.pop(0)(stored)
                    stored.patch({"metadata": {"resourceVersion": str(next(self._versions))}})
                current = stored.get("metadata", {}).get("resourceVersion")
                sent = ((request.data or {}).get("metadata") or {}).get("resourceVersion")
                if sent is not None and sent != current:
                    raise KubernetesError(status=409, reason="Conflict", message=(
                        f"Operation cannot be fulfilled on {request.resource.plural} \"{request.name}\": the object "
                        "has been modified; please apply your changes to the latest version and try again"))
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)


class EmulatorThread:
    """A VersionedEmulator served over HTTP from its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock emulator did not start within 10 s")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with VersionedEmulator() as emulator, Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def k8s() -> Iterator[EmulatorThread]:
    server = EmulatorThread()
    yield server
    server.close()


def api_for(url: str) -> client.CustomObjectsApi:
    configuration = client.Configuration()
    configuration.host = url
    configuration.retries = 0  # the adapter retries; urllib3's own retries would only slow the tests
    return client.CustomObjectsApi(client.ApiClient(configuration))


# -- the three kinds of route object -------------------------------------------------------------

HTTPROUTE = resource("gateway.networking.k8s.io", "v1", "httproutes")
VIRTUALSERVICE = resource("networking.istio.io", "v1", "virtualservices")
INFERENCESERVICE = resource("serving.kserve.io", "v1beta1", "inferenceservices")


def http_route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": MODEL, "namespace": NS, "resourceVersion": "1", "labels": {"team": "risk"}},
        "spec": {
            "parentRefs": [{"name": "ml-gateway"}],
            "hostnames": ["fraud.example.com"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/predict"}}],
                 "backendRefs": [{"name": "fraud-v1", "port": 8080, "weight": 90},
                                 {"name": "fraud-v2", "port": 8080, "weight": 10}]},
                {"backendRefs": [{"name": "fraud-debug", "port": 8080}]},
            ],
        },
    }


def virtual_service() -> dict[str, Any]:
    host = "fraud.ml.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": MODEL, "namespace": NS, "resourceVersion": "1"},
        "spec": {
            "hosts": ["fraud.example.com"],
            "http": [
                {"name": "primary", "timeout": "2s",
                 "route": [{"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}, "weight": 90},
                           {"destination": {"host": host, "subset": "v2", "port": {"number": 8080}}, "weight": 10}]},
                {"name": "debug", "route": [{"destination": {"host": "fraud-debug"}}]},
            ],
        },
    }


def inference_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": MODEL, "namespace": NS, "resourceVersion": "1",
                     "annotations": {"mle-stream.io/versions": json.dumps({"latest": "2", "previous": "1"})}},
        "spec": {"predictor": {"canaryTrafficPercent": 10,
                               "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/fraud/2"}}},
    }


def kept_http_route(obj: dict[str, Any]) -> None:
    assert obj["spec"]["hostnames"] == ["fraud.example.com"]
    assert obj["spec"]["rules"][0]["matches"] == http_route()["spec"]["rules"][0]["matches"]
    assert obj["spec"]["rules"][1] == http_route()["spec"]["rules"][1]
    assert obj["spec"]["rules"][0]["backendRefs"] == [{"name": "fraud-v1", "port": 8080, "weight": 100},
                                                      {"name": "fraud-v2", "port": 8080, "weight": 0}]
    assert json.loads(obj["metadata"]["annotations"]["mle-stream.io/versions"]) == {"fraud-v1": "1", "fraud-v2": "2"}
    assert obj["metadata"]["labels"] == {"team": "risk"}


def kept_virtual_service(obj: dict[str, Any]) -> None:
    http = obj["spec"]["http"]
    assert [h["name"] for h in http] == ["primary", "debug"] and http[0]["timeout"] == "2s"
    assert http[1] == virtual_service()["spec"]["http"][1]
    assert [(r["destination"]["subset"], r["weight"], r["destination"]["port"]) for r in http[0]["route"]] == [
        ("v1", 100, {"number": 8080}), ("v2", 0, {"number": 8080})]


def kept_inference_service(obj: dict[str, Any]) -> None:
    predictor = obj["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 0  # KServe: 0 pins all traffic to the previous revision
    assert predictor["model"] == inference_service()["spec"]["predictor"]["model"]


@dataclass(frozen=True)
class Case:
    name: str
    res: Any
    seed: Callable[[], dict[str, Any]]
    make: Callable[..., ObjectRouting]
    initial: dict[str, int]
    after_rollback: dict[str, int]
    check: Callable[[dict[str, Any]], None]


CASES = [
    Case("gateway-api", HTTPROUTE, http_route,
         lambda api, **kw: GatewayAPIRouting(api, namespace=NS, **{**FAST, **kw}),
         {"1": 90, "2": 10}, ROLLBACK, kept_http_route),
    Case("istio", VIRTUALSERVICE, virtual_service,
         lambda api, **kw: IstioRouting(api, namespace=NS, **{**FAST, **kw}),
         {"1": 90, "2": 10}, ROLLBACK, kept_virtual_service),
    Case("kserve", INFERENCESERVICE, inference_service,
         lambda api, **kw: KServeRouting(api, namespace=NS, **{**FAST, **kw}),
         {"1": 90, "2": 10}, ROLLBACK, kept_inference_service),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


def seeded(k8s: EmulatorThread, case: Case, **options: Any) -> ObjectRouting:
    k8s.emulator.objects[case.res, NS, MODEL] = case.seed()
    return case.make(api_for(k8s.url), **options)


def stored(k8s: EmulatorThread, case: Case) -> dict[str, Any]:
    return k8s.emulator.objects[case.res, NS, MODEL].raw


def last_id(routing: RoutingBackend, model: str) -> str | None:
    marker = routing.last_applied(model)
    return marker.command_id if marker else None


def requests(k8s: EmulatorThread, method: str) -> int:
    return sum(1 for r in k8s.emulator if r.method.value == method)


def fail_first(n: int, status: int, message: str = "etcdserver: request timed out") -> Callable[[Any], Any]:
    """A kmock reaction: answer the first `n` matching requests with `status`, then fall through."""
    counter = itertools.count()

    def react(request: Any) -> Any:
        if next(counter) < n:
            return Response(status=status, payload={"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                                    "code": status, "message": message})
        return NotImplemented  # let the emulator serve it

    return react


# -- the contract, for every backend --------------------------------------------------------------

def test_get_set_round_trip_keeps_the_rest_of_the_object(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    assert isinstance(routing, RoutingBackend)
    assert routing.get_weights(MODEL) == case.initial

    revision = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="ROLLBACK: error rate")

    obj = stored(k8s, case)
    assert revision == obj["metadata"]["resourceVersion"] and revision != "1"
    assert routing.get_weights(MODEL) == case.after_rollback
    case.check(obj)
    assert requests(k8s, "PATCH") == 1  # weights and annotations in one patch


def test_annotations_record_the_command(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    assert routing.last_applied(MODEL) is None

    routing.set_weights(MODEL, dict(ROLLBACK), command_id="cmd-7", reason="ROLLBACK (error_rate): 4.1% vs 1.0%",
                        issued_at=1_700_000_000_123)

    annotations = stored(k8s, case)["metadata"]["annotations"]
    assert annotations[LAST] == "cmd-7" and annotations[REASON] == "ROLLBACK (error_rate): 4.1% vs 1.0%"
    assert annotations[ISSUED_AT] == "1700000000123"
    marker = routing.last_applied(MODEL)
    assert marker is not None and (marker.command_id, marker.issued_at) == ("cmd-7", 1_700_000_000_123)
    patch = next(r for r in k8s.emulator if r.method.value == "PATCH")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    sent = json.loads(patch.body)  # as sent: the emulator stamps the new version into patch.data
    assert sent["metadata"]["resourceVersion"] == "1"  # optimistic concurrency: the version read


def test_setting_the_same_weights_again_is_a_no_op(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    first = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")
    again = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")
    assert again == first and requests(k8s, "PATCH") == 1

    # The same weights for another command record that command (its id is what makes it durable).
    third = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c2", reason="r2")
    assert third != first and last_id(routing, MODEL) == "c2"
    assert routing.get_weights(MODEL) == case.after_rollback


def test_a_missing_object_fails_at_once_naming_it(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    for call in (lambda: routing.get_weights("other"),
                 lambda: routing.set_weights("other", dict(ROLLBACK), command_id="c", reason="r"),
                 lambda: routing.last_applied("other")):
        with pytest.raises(ActuationError, match=rf"{routing.kind} ml/other .*model 'other'.*404") as info:
            call()
        assert info.value.__cause__ is not None
    assert requests(k8s, "GET") == 3  # one each: a 404 is not retried


@pytest.mark.parametrize("weights, problem", [
    ({"1": 90, "2": 5}, "add up to 95"),
    ({"1": 110, "2": -10}, "whole percent"),
    ({}, "no weights"),
    ({"1": 50.0, "2": 50}, "whole percent"),
])
def test_bad_weights_are_refused_before_any_request(k8s: EmulatorThread, case: Case, weights: dict[str, Any],
                                                    problem: str) -> None:
    routing = seeded(k8s, case)
    with pytest.raises(ActuationError, match=problem):
        routing.set_weights(MODEL, weights, command_id="c", reason="r")
    with pytest.raises(ActuationError, match="command id"):
        routing.set_weights(MODEL, dict(ROLLBACK), command_id="", reason="r")
    with pytest.raises(ActuationError, match="not a valid Kubernetes name"):
        routing.set_weights("Bad_Name", dict(ROLLBACK), command_id="c", reason="r")
    assert len(list(k8s.emulator)) == 0


def test_retries_a_500_then_succeeds(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    k8s.emulator["get", case.res] << fail_first(2, 500)

    routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")

    assert requests(k8s, "GET") == 3 and requests(k8s, "PATCH") == 1
    assert stored(k8s, case)["metadata"]["annotations"][LAST] == "c1"


def test_a_conflict_re_reads_and_patches_the_fresh_object(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    # Someone labels the object between the adapter's read and its patch.
    k8s.emulator.concurrent_writes.append(lambda obj: obj.patch({"metadata": {"labels": {"touched": "yes"}}}))

    revision = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")

    obj = stored(k8s, case)
    assert requests(k8s, "PATCH") == 2 and requests(k8s, "GET") == 2
    assert obj["metadata"]["labels"]["touched"] == "yes"  # the other writer's change survives
    assert obj["metadata"]["annotations"][LAST] == "c1" and revision == obj["metadata"]["resourceVersion"]
    assert routing.get_weights(MODEL) == case.after_rollback


def test_gives_up_after_the_attempt_limit(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    k8s.emulator["get", case.res] << fail_first(99, 503, "the server is currently unable to handle the request")

    with pytest.raises(ActuationError, match=r"failed 3 times in a row.*HTTP 503.*unable to handle") as info:
        routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")

    assert "routing 100% -> v1" in str(info.value) and "model 'fraud'" in str(info.value)
    assert info.value.__cause__ is not None
    assert requests(k8s, "GET") == 3 and requests(k8s, "PATCH") == 0


def test_a_forbidden_request_is_not_retried(k8s: EmulatorThread, case: Case) -> None:
    routing = seeded(k8s, case)
    k8s.emulator["get", case.res] << fail_first(99, 403, "cannot get resource")

    with pytest.raises(ActuationError, match=rf"HTTP 403.*get and patch on {case.res.plural}"):
        routing.get_weights(MODEL)
    assert requests(k8s, "GET") == 1


# -- failures that are not per backend -----------------------------------------------------------

def test_an_unreachable_api_server_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    routing = GatewayAPIRouting(api_for(f"http://127.0.0.1:{port}"), namespace=NS, attempts=2, base_delay_s=0.01,
                                max_delay_s=0.01, timeout_s=2.0)
    with pytest.raises(ActuationError, match=r"HTTPRoute ml/fraud .*failed 2 times in a row.*(refused|Connection)"):
        routing.get_weights(MODEL)


def test_a_500_after_the_patch_landed_finds_the_command_applied(k8s: EmulatorThread) -> None:
    # The emulator stores a patch before any reaction answers, like an API server whose answer
    # is lost after etcd committed: the retry must see the command there and not patch again.
    case = CASES[0]
    routing = seeded(k8s, case)
    k8s.emulator["patch", case.res] << fail_first(1, 500)

    revision = routing.set_weights(MODEL, dict(ROLLBACK), command_id="c1", reason="r")

    assert requests(k8s, "PATCH") == 1 and revision == stored(k8s, case)["metadata"]["resourceVersion"]
    assert last_id(routing, MODEL) == "c1"


# -- backend specifics -------------------------------------------------------------------------

def test_gateway_api_gives_a_new_version_a_backend_ref(k8s: EmulatorThread) -> None:
    route = http_route()
    route["metadata"]["annotations"] = {"mle-stream.io/versions": json.dumps({"fraud-v1": "1", "fraud-v2": "2"})}
    k8s.emulator.objects[HTTPROUTE, NS, MODEL] = route
    routing = GatewayAPIRouting(api_for(k8s.url), namespace=NS, service_template="{model}-svc-{version}", **FAST)
    routing.set_weights(MODEL, {"1": 80, "2": 0, "3": 20}, command_id="c", reason="r")
    refs = stored(k8s, CASES[0])["spec"]["rules"][0]["backendRefs"]
    assert refs[2] == {"name": "fraud-svc-3", "port": 80, "weight": 20}
    assert routing.get_weights(MODEL) == {"1": 80, "2": 0, "3": 20}


def test_istio_new_subset_uses_the_route_host_and_unknown_subsets_fail(k8s: EmulatorThread) -> None:
    routing = seeded(k8s, CASES[1])
    routing.set_weights(MODEL, {"1": 50, "3": 50}, command_id="c", reason="r")
    route = stored(k8s, CASES[1])["spec"]["http"][0]["route"]
    assert route[1] == {"destination": {"host": "fraud.ml.svc.cluster.local", "subset": "v3"}, "weight": 50}

    k8s.emulator.objects[VIRTUALSERVICE, NS, MODEL]["spec"]["http"][0]["route"][0]["destination"]["subset"] = "blue"
    with pytest.raises(ActuationError, match=r"subset 'blue' does not match the subset template 'v\{version\}'"):
        routing.get_weights(MODEL)


def test_istio_a_lone_unweighted_destination_takes_all_traffic(k8s: EmulatorThread) -> None:
    k8s.emulator.objects[VIRTUALSERVICE, NS, MODEL] = {
        "metadata": {"name": MODEL, "namespace": NS},
        "spec": {"http": [{"route": [{"destination": {"host": "fraud", "subset": "release-1"}}]}]},
    }
    routing = IstioRouting(api_for(k8s.url), namespace=NS, subset_template="release-{version}", **FAST)
    assert routing.get_weights(MODEL) == {"1": 100}


def test_kserve_promote_canary_step_and_versions_it_cannot_route(k8s: EmulatorThread) -> None:
    case = CASES[2]
    routing = seeded(k8s, case)

    routing.set_weights(MODEL, {"1": 75, "2": 25}, command_id="step", reason="r")
    assert stored(k8s, case)["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert routing.get_weights(MODEL) == {"2": 25, "1": 75}

    # Promotion removes the field: KServe then rolls the latest revision out to 100%.
    routing.set_weights(MODEL, {"1": 0, "2": 100}, command_id="promote", reason="r")
    assert "canaryTrafficPercent" not in stored(k8s, case)["spec"]["predictor"]
    assert routing.get_weights(MODEL) == {"2": 100, "1": 0}

    patches = requests(k8s, "PATCH")
    with pytest.raises(ActuationError, match=r"KServe splits traffic only between the latest revision \(v2\) and "
                                             r"the previous one \(v1\), so version\(s\) 3 have no revision"):
        routing.set_weights(MODEL, {"2": 50, "3": 50}, command_id="c", reason="r")
    assert requests(k8s, "PATCH") == patches


def test_kserve_versions_from_the_topology_when_the_annotation_is_absent(k8s: EmulatorThread) -> None:
    obj = inference_service()
    del obj["metadata"]["annotations"]
    k8s.emulator.objects[INFERENCESERVICE, NS, MODEL] = obj
    api = api_for(k8s.url)

    routing = KServeRouting(api, namespace=NS, default_versions={"latest": "2", "previous": "1"}, **FAST)
    assert routing.get_weights(MODEL) == {"2": 10, "1": 90}

    with pytest.raises(ActuationError, match="no version known for the latest revision"):
        KServeRouting(api, namespace=NS, **FAST).get_weights(MODEL)
    with pytest.raises(ValueError, match="must map \"latest\""):
        KServeRouting(api, namespace=NS, default_versions={"canary": "2"})


def test_constructor_refuses_bad_templates_and_retry_settings() -> None:
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration()))
    with pytest.raises(ValueError, match="service_template"):
        GatewayAPIRouting(api, service_template="fraud")
    with pytest.raises(ValueError, match="subset_template"):
        IstioRouting(api, subset_template="{model}")
    with pytest.raises(ValueError, match="name_template"):
        KServeRouting(api, name_template="{version}")
    with pytest.raises(ValueError, match="attempts"):
        GatewayAPIRouting(api, attempts=0)


# -- the actuator end to end over a Kubernetes backend --------------------------------------------

def make_command(kind: CommandKind, traffic: dict[str, int], issued_at: int | None = None) -> Command:
    now = epoch_ms() if issued_at is None else issued_at  # the actuator refuses an expired command
    return SIGNER.sign(Command(
        command_id=command_id(MODEL, "1", "2", kind, "error_rate", now - 360_000, now - 60_000),
        kind=kind, model=MODEL, baseline_version="1", candidate_version="2", traffic=traffic,
        reason="error rate of v2 is 4.1% vs 1.0% on v1", rule="error_rate", window_start=now - 360_000,
        window_end=now - 60_000, evidence="{}", policy_version="p1", issued_at=now,
    ))


def registry() -> InMemoryRegistry:
    reg = InMemoryRegistry({MODEL: ["1", "2"]})
    reg.set_alias(MODEL, "champion", "1")
    reg.set_alias(MODEL, "challenger", "2")
    return reg


def test_actuator_rolls_back_through_the_api_server_and_skips_the_redelivery(k8s: EmulatorThread) -> None:
    case = CASES[0]
    routing, reg = seeded(k8s, case), registry()
    command = make_command(CommandKind.ROLLBACK, dict(ROLLBACK))

    event = Actuator(routing, reg, VERIFIER).handle(command)
    assert event.status is RolloutStatus.APPLIED, event.details
    assert event.route_weights == {"1": 100, "2": 0} and event.champion == "1" and event.challenger is None
    assert stored(k8s, case)["metadata"]["annotations"][LAST] == command.command_id
    case.check(stored(k8s, case))

    # Redelivered to a fresh actuator (a restart): the durable records say it is done.
    patches = requests(k8s, "PATCH")
    again = Actuator(routing, reg, VERIFIER).handle(command)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE, again.details
    assert requests(k8s, "PATCH") == patches


def test_actuator_resumes_when_the_registry_step_failed_after_the_route(k8s: EmulatorThread) -> None:
    case = CASES[2]
    routing = seeded(k8s, case)
    command = make_command(CommandKind.ROLLBACK, dict(ROLLBACK))
    reg = registry()

    class Outage(InMemoryRegistry):
        def set_alias(self, model: str, alias: str, version: str) -> None:
            raise ActuationError("MLflow is down")

    down = Outage({MODEL: ["1", "2"]})
    failed = Actuator(routing, down, VERIFIER).handle(command)
    assert failed.status is RolloutStatus.FAILED and "registry step failed" in failed.details
    assert last_id(routing, MODEL) == command.command_id
    patches = requests(k8s, "PATCH")

    resumed = Actuator(routing, reg, VERIFIER).handle(command)
    assert resumed.status is RolloutStatus.APPLIED and "resumed" in resumed.details
    assert requests(k8s, "PATCH") == patches  # the route was not patched again
    assert resumed.route_weights == {"1": 100, "2": 0}


def test_a_set_traffic_replayed_after_a_rollback_is_stale_across_a_restart(k8s: EmulatorThread, case: Case) -> None:
    routing, reg = seeded(k8s, case), registry()
    now = epoch_ms()
    step = make_command(CommandKind.SET_TRAFFIC, {"1": 50, "2": 50}, issued_at=now - 60_000)
    rollback = make_command(CommandKind.ROLLBACK, dict(ROLLBACK), issued_at=now - 30_000)
    assert Actuator(routing, reg, VERIFIER).handle(step).status is RolloutStatus.APPLIED
    assert routing.get_weights(MODEL) == {"1": 50, "2": 50}
    assert Actuator(routing, reg, VERIFIER).handle(rollback).status is RolloutStatus.APPLIED
    assert stored(k8s, case)["metadata"]["annotations"][ISSUED_AT] == str(rollback.issued_at)
    patches = requests(k8s, "PATCH")

    # A restarted actuator, on a fresh client and a registry that lost its tags: the route alone knows.
    fresh = case.make(api_for(k8s.url))
    replay = Actuator(fresh, registry(), VERIFIER).handle(step)
    assert replay.status is RolloutStatus.REJECTED and replay.details.startswith("STALE: "), replay.details
    assert rollback.command_id in replay.details and "route" in replay.details
    assert requests(k8s, "PATCH") == patches
    assert fresh.get_weights(MODEL) == case.after_rollback

    # The newest command delivered again is a duplicate, not stale.
    again = Actuator(fresh, reg, VERIFIER).handle(rollback)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE, again.details


# -- wiring: topologies and flags -> backends ------------------------------------------------------

def test_build_routing_picks_each_models_backend_from_its_topology(k8s: EmulatorThread, tmp_path: Path) -> None:
    from mle_stream.actuator.backends import RoutingOptions, build_routing
    from mle_stream.core.topology import parse_topology

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "emulator", "cluster": {"server": k8s.url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "actuator", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "emulator", "user": "actuator"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "actuator"}}],
    }))
    base = 'task: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    topologies = {
        "fraud": parse_topology(f"model: fraud\n{base}routing: {{backend: istio, namespace: ml}}\n", "fraud.yaml"),
        "churn": parse_topology(f"model: churn\n{base}routing: {{backend: kserve, namespace: ml}}\n", "churn.yaml"),
    }
    k8s.emulator.objects[VIRTUALSERVICE, NS, "fraud"] = virtual_service()
    isvc = inference_service()
    isvc["metadata"].update(name="churn", annotations={})  # versions from the topology instead
    k8s.emulator.objects[INFERENCESERVICE, NS, "churn"] = isvc

    routing = build_routing(topologies, RoutingOptions(kubeconfig=kubeconfig, kube_context="test"))
    assert routing.get_weights("fraud") == {"1": 90, "2": 10}
    assert routing.get_weights("churn") == {"2": 10, "1": 90}

    with pytest.raises(ConfigError, match=r"--gitops-repo DIR is required: routing.backend is gitops \(the default\) "
                                          r"in g.yaml \(g\)"):
        build_routing({"g": parse_topology(f"model: g\n{base}", "g.yaml")}, RoutingOptions())
    with pytest.raises(ConfigError, match="cannot load Kubernetes config from .*context 'missing'"):
        build_routing(topologies, RoutingOptions(kubeconfig=kubeconfig, kube_context="missing"))


def test_without_any_kubernetes_configuration_the_error_says_what_to_pass(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    from mle_stream.actuator.backends import kubernetes_api_client

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"not running in a pod .*pass --kubeconfig FILE"):
        kubernetes_api_client(None, None)

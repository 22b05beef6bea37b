import re
from pathlib import Path

import pytest

from mle_stream.core.topology import load_topologies, load_topology, parse_duration_ms, parse_topology
from mle_stream.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

MINIMAL = 'model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'


def test_every_shipped_topology_is_valid() -> None:
    topologies = load_topologies([REPO / "topologies"])
    demo = topologies["fraud-detector"]
    assert (demo.baseline_version, demo.candidate_version) == ("1", "2")
    assert demo.window_size_ms == 5_000 and demo.checks[0].consecutive == 3


def test_defaults_and_policy_version_follow_the_text() -> None:
    t = parse_topology(MINIMAL)
    assert t.window_size_ms == 60_000 and t.label_max_delay_ms == 7 * 86_400_000
    (check,) = t.checks  # without checks, the rollback shorthand's default
    assert (check.metric, check.max_degradation, check.min_samples, check.consecutive) == ("error_rate", 0.05, 100, 3)
    assert parse_topology(MINIMAL).policy_version == t.policy_version
    assert parse_topology(MINIMAL + "threshold: 0.7\n").policy_version != t.policy_version


@pytest.mark.parametrize("text,duration",
                         [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("1.5h", 5_400_000), ("7d", 604_800_000)])
def test_durations(text: str, duration: int) -> None:
    assert parse_duration_ms(text) == duration


def test_every_error_is_reported_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model: m\n"             # 1
        "task: binar\n"          # 2
        'baseline: {version: "1"}\n'  # 3
        "candidate: {version: '1'}\n"  # 4
        "windows:\n"             # 5
        "  size: ten\n"          # 6
        "  sise: 5s\n"           # 7
        "rollback:\n"            # 8
        "  max_increase: 3\n"    # 9
        "  consecutive_windows: 0\n"  # 10
    )
    with pytest.raises(ConfigError) as info:
        load_topology(bad)
    message = str(info.value)
    for expected in [
        f"{bad}:2: task: expected one of binary, multiclass, regression, got 'binar'",
        f"{bad}:4: candidate.version: must differ from baseline.version ('1')",
        f"{bad}:6: windows.size: expected a duration like 30s",
        f"{bad}:7: windows.sise: unknown key",
        f"{bad}:9: rollback.max_increase: expected a number between 0 and 1, got 3",
        f"{bad}:10: rollback.consecutive_windows: expected a whole number >= 1, got 0",
    ]:
        assert expected in message
    assert message.startswith("6 problem(s)")


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: m\ntask: [binary\n")
    with pytest.raises(ConfigError, match=rf"{bad}:3: not valid YAML"):
        load_topology(bad)


def test_regression_cannot_use_error_rate() -> None:
    with pytest.raises(ConfigError, match="error_rate needs a classification task"):
        parse_topology(MINIMAL.replace("binary", "regression") + "rollback: {metric: error_rate}\n")
    (check,) = parse_topology(MINIMAL.replace("binary", "regression")).checks
    assert check.metric == "serving_error_rate"  # the default check of a regression model


def test_two_files_for_one_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yaml").write_text(MINIMAL)
    with pytest.raises(ConfigError, match="already described by"):
        load_topologies([tmp_path])


def test_the_ab_example_is_an_ab_test_with_one_split() -> None:
    t = load_topology(REPO / "topologies" / "recommender-ab.yaml")
    assert t.mode == "ab" and t.rollout is not None and t.rollout.steps == (50, 100)
    assert [c.name for c in t.checks] == ["clicks-vs-baseline", "auc-vs-baseline", "p99-latency"]
    assert t.checks[0].sequential is not None and t.checks[0].sequential.alpha == 0.01
    with pytest.raises(ConfigError, match="mode ab needs rollout"):
        parse_topology(MINIMAL + "mode: ab\n")
    with pytest.raises(ConfigError, match="an A/B test has one split"):
        parse_topology(MINIMAL + "mode: ab\nrollout: {steps: [10, 50, 100]}\n")


ALIASED = 'model: m\ntask: binary\nbaseline: {alias: champion}\ncandidate: {alias: challenger}\n'


def test_aliases_resolve_to_the_registrys_versions() -> None:
    from mle_stream.core.topology import resolve_aliases

    t = parse_topology(ALIASED, "t.yaml")
    assert (t.baseline_alias, t.candidate_alias, t.baseline_version) == ("champion", "challenger", "")
    resolved = resolve_aliases(t, lambda model: {"champion": "3", "challenger": "4", "old": "1"})
    assert (resolved.baseline_version, resolved.candidate_version) == ("3", "4")
    mixed = parse_topology(ALIASED.replace("{alias: challenger}", '{version: "7"}'))
    assert resolve_aliases(mixed, lambda model: {"champion": "3"}).candidate_version == "7"
    with pytest.raises(ConfigError, match=r"t.yaml: candidate.alias 'challenger': model 'm' has no such alias "
                                          r"in the registry \(its aliases: champion -> v3\)"):
        resolve_aliases(t, lambda model: {"champion": "3"})
    with pytest.raises(ConfigError, match="both version '3'"):
        resolve_aliases(t, lambda model: {"champion": "3", "challenger": "3"})
    assert resolve_aliases(parse_topology(MINIMAL), lambda model: {}) == parse_topology(MINIMAL)


@pytest.mark.parametrize("text, message", [
    (MINIMAL.replace('{version: "1"}', '{version: "1", alias: champion}'), "baseline: give either version"),
    (MINIMAL.replace('{version: "1"}', "{}"), "baseline: give either version"),
    (ALIASED.replace("challenger", "champion"), "candidate.alias: must differ from baseline.alias"),
])
def test_alias_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as exc:
        parse_topology(text, "t.yaml")
    assert "t.yaml:" in str(exc.value)


def test_routing_backends_and_their_fields() -> None:
    from mle_stream.core.topology import RoutingTarget

    assert parse_topology(MINIMAL).routing == RoutingTarget()  # gitops, the defaults
    gateway = parse_topology(MINIMAL + "routing:\n  backend: gateway-api\n  namespace: ml\n  name: \"{model}-route\"\n"
                                       "  service: \"{model}-svc-{version}\"\n").routing
    assert (gateway.backend, gateway.namespace, gateway.name, gateway.service) == (
        "gateway-api", "ml", "{model}-route", "{model}-svc-{version}")
    istio = parse_topology(MINIMAL + "routing:\n  backend: istio\n  subset: \"release-{version}\"\n"
                                     "  host: \"{model}.ml.svc.cluster.local\"\n").routing
    assert (istio.backend, istio.subset, istio.host, istio.name) == (
        "istio", "release-{version}", "{model}.ml.svc.cluster.local", "{model}")
    kserve = parse_topology(MINIMAL + "routing: {backend: kserve, namespace: serving}\n").routing
    assert (kserve.backend, kserve.namespace, kserve.name) == ("kserve", "serving", "{model}")


@pytest.mark.parametrize("routing, line, message", [
    ("routing:\n  backend: linkerd\n", 6, "routing.backend: expected one of gitops, gateway-api, istio, kserve"),
    ("routing:\n  backend: kserve\n  service: \"{model}-v{version}\"\n", 7,
     "routing.service: does not apply to backend kserve; it takes name, namespace"),
    ("routing:\n  backend: gitops\n  subset: \"v{version}\"\n", 7, "routing.subset: does not apply to backend gitops"),
    ("routing:\n  backend: istio\n  subset: stable\n", 7, "routing.subset: template 'stable' must use {version}"),
    ("routing:\n  backend: gateway-api\n  name: \"{model}-{version}\"\n", 7,
     "routing.name: template '{model}-{version}' may use only {model}, not {version}"),
    ("routing:\n  backend: gateway-api\n  service: \"{model}\"\n", 7,
     "routing.service: template '{model}' must use {version}"),
    ("routing:\n  backend: istio\n  host: \"{cluster}\"\n", 7,
     "routing.host: template '{cluster}' may use only {model}"),
    ("routing:\n  manifest: \"routes/{model\"\n", 6, "routing.manifest: 'routes/{model' is not a valid template"),
    ("routing:\n  backend: gateway-api\n  namespace: \"\"\n", 7, "routing.namespace: expected a non-empty string"),
])
def test_routing_errors_name_the_file_and_line(routing: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"t.yaml:{line}: {message}")):
        parse_topology(MINIMAL + routing, "t.yaml")

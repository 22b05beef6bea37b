"""The environment variables: each declared once (mle_stream.config.ENVIRONMENT), read only through
mle_stream.config, listed by every --help and by docs/operations.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mle_stream.config import ENVIRONMENT, Settings, Variable, declared, environment_help, read

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "mle_stream").rglob("*.py"))
NAME = re.compile(r"MLE_[A-Z0-9_]+")


def names_in(text: str) -> set[str]:
    return set(NAME.findall(text))


def is_declared(name: str) -> bool:
    """A full name is covered by a declaration; a prefix (MLE_TOPIC_ of f"MLE_TOPIC_{name}", MLE_KAFKA_ of
    MLE_KAFKA_<PROPERTY>) starts one."""
    if name.endswith("_"):
        return any(variable.name.startswith(name) for variable in ENVIRONMENT)
    try:
        declared(name)
    except KeyError:
        return False
    return True


def test_every_variable_the_source_names_is_declared_and_in_the_help() -> None:
    names = {name for path in SOURCES for name in names_in(path.read_text())}
    assert {"MLE_BOOTSTRAP_SERVERS", "MLE_TOPIC_", "MLE_KAFKA_SSL_CA_LOCATION", "MLE_NOTIFY_WINDOW"} <= names
    assert sorted(name for name in names if not is_declared(name)) == []
    help_text = environment_help()
    full = {name for name in names if not name.endswith("_")}
    assert sorted(name for name in full if declared(name).name not in help_text) == []
    assert not is_declared("MLE_NOT_A_SETTING")  # the check can fail


def test_each_variable_is_declared_once_with_help() -> None:
    names = [variable.name for variable in ENVIRONMENT]
    assert len(names) == len(set(names))
    assert all(variable.help.strip() for variable in ENVIRONMENT)
    with pytest.raises(KeyError, match="MLE_TYPO"):
        read("MLE_TYPO", {})


def test_the_help_lists_the_topic_names_and_the_status_port_of_the_settings() -> None:
    help_text = " ".join(environment_help().split())  # unwrapped
    assert "PREDICTIONS (mle.predictions)" in help_text and "STATE (mle.state)" in help_text
    assert "DRIFT (mle.drift)" in help_text
    assert "port of the worker's live status page (same as worker --status-port; 0: none). Default: 8077." \
        in help_text
    assert read("MLE_WORKER_GROUP", {}, Settings.worker_group) == "mle-stream-worker"


def test_only_the_configuration_reads_the_settings_from_the_environment() -> None:
    """No module but mle_stream/config.py reads an MLE_ variable from os.environ, or takes os.environ
    as a default: they get the values through mle_stream.config."""

    def is_os_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and \
            isinstance(node.value, ast.Name) and node.value.id == "os"

    def names_setting(node: ast.AST) -> bool:
        text = ast.unparse(node)
        return "MLE_" in text or "MLFLOW_TRACKING_URI" in text

    found = []
    for path in SOURCES:
        if path.name == "config.py" and path.parent.name == "mle_stream":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and node.args and names_setting(node.args[0]) and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                     and is_os_environ(node.func.value))
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "getenv")):
                found.append(where)
            elif isinstance(node, ast.Subscript) and is_os_environ(node.value) and names_setting(node.slice) \
                    and isinstance(node.ctx, ast.Load):
                found.append(where)
            elif isinstance(node, ast.arguments):
                found += [f"{path.relative_to(REPO)}:{d.lineno}" for d in [*node.defaults, *node.kw_defaults]
                          if d is not None and is_os_environ(d)]
    assert found == [], found


def test_docs_operations_lists_every_variable() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    table = text[text.index("| variable | default | meaning |"):]
    table = table[:table.index("\n\n")]
    first_cells = " ".join(line.split("|")[1] for line in table.splitlines()[2:])
    listed = names_in(first_cells) | ({"MLFLOW_TRACKING_URI"} if "MLFLOW_TRACKING_URI" in first_cells else set())
    assert sorted(name for name in listed if not is_declared(name)) == []

    def is_listed(variable: Variable) -> bool:
        family = variable.name.partition("<")[0]  # MLE_KAFKA_<PROPERTY>: the row says MLE_KAFKA_<PROPERTY>
        return any(variable.covers(name) or name == family for name in listed)

    assert [variable.name for variable in ENVIRONMENT if not is_listed(variable)] == []


def test_the_declared_defaults_are_the_components_own() -> None:
    """The defaults that live in a component (config cannot import it) against what the help says."""
    from mle_stream.actuator.notify import DEFAULT_LIMIT, DEFAULT_WINDOW_S
    from mle_stream.config import duration_ms
    from mle_stream.health import STALL_AFTER_S

    assert declared("MLE_NOTIFY_LIMIT").default == str(DEFAULT_LIMIT)
    assert duration_ms(declared("MLE_NOTIFY_WINDOW").default, "", "") == DEFAULT_WINDOW_S * 1000
    assert duration_ms(declared("MLE_HEALTH_STALL_AFTER").default, "", "") == STALL_AFTER_S * 1000

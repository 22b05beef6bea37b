"""The layer rules: the pure core imports no stream, async, Kubernetes, MLflow or Kafka code; the
worker side and the actuator do not import each other; the client and the wire format need no
stream runtime, Kubernetes or MLflow (pyproject.toml, [tool.importlinter])."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import mle_stream
from mle_stream import wire

REPO = Path(__file__).resolve().parent.parent
CORE = Path(mle_stream.__file__).parent / "core"
FORBIDDEN = {"faust", "mode", "asyncio", "kubernetes", "mlflow", "confluent_kafka", "aiokafka", "prometheus_client",
             "mle_stream.stream", "mle_stream.actuator", "mle_stream.telemetry"}


def test_import_linter_contract_holds() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_core_modules_import_nothing_forbidden() -> None:
    # A second, independent check: import-linter may treat the standard library (asyncio) apart.
    offenders = []
    paths = sorted(CORE.rglob("*.py"))
    assert CORE / "metrics" / "binary.py" in paths and CORE / "drift" / "sketch.py" in paths  # the subpackages too
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(CORE)}: {n}" for n in names
                          if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []


def test_public_api_is_explicit() -> None:
    assert sorted(mle_stream.__all__) == mle_stream.__all__
    for name in mle_stream.__all__:
        assert hasattr(mle_stream, name), name


def test_the_wire_format_has_one_public_surface() -> None:
    assert sorted(wire.__all__) == wire.__all__
    for name in wire.__all__:
        assert hasattr(wire, name), name
    # Its modules share public names only, and its fast batch reader stays private to it.
    package = Path(mle_stream.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        inside = path.parent.name == "wire"
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("mle_stream"):
                continue
            module = node.module or ""
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private and (inside or module.startswith("mle_stream.wire")):
                offenders.append(f"{path.relative_to(package)}: {module} {private}")
            if not inside and module.startswith("mle_stream.wire._"):
                offenders.append(f"{path.relative_to(package)}: {module}")
    assert offenders == []

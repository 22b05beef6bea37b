"""The `mle-stream` command as a user meets it: help, validation errors, the standalone broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from mle_stream.config import Topics

REPO = Path(__file__).resolve().parent.parent


def mle(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mle_stream", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


@pytest.mark.parametrize("command", ["broker", "worker", "actuator", "validate", "demo", "command", "actuate",
                                     "replay", "bench", "profile", "profile build", "status", "keys",
                                     "keys generate", "init-topology", "ingest"])
def test_every_command_explains_itself(command: str) -> None:
    result = mle(*command.split(), "--help")
    assert result.returncode == 0
    assert "MLE_BOOTSTRAP_SERVERS" in result.stdout and "MLE_SIGNING_KEY" in result.stdout
    assert f"usage: mle-stream {command}" in result.stdout
    assert "examples:\n  mle-stream " in result.stdout or "examples:\n  MLE_" in result.stdout


def test_every_command_has_a_help_test() -> None:
    from mle_stream.cli import COMMANDS

    tested = {c.split()[0] for c in test_every_command_explains_itself.pytestmark[0].args[1]}  # type: ignore[attr-defined]
    assert set(COMMANDS) <= tested


@pytest.mark.parametrize("mode", ["worker", "memory", "drift", "decisions"])
def test_every_bench_mode_explains_itself(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mle_stream.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", mode, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert f"usage: mle-stream bench {mode}" in out and "examples:\n  mle-stream bench " in out
    assert "MLE_BOOTSTRAP_SERVERS" in out


def test_the_benchmarks_are_loaded_only_by_the_bench_subcommands() -> None:
    """Importing the CLI, the worker's, the actuator's and the status page's modules and
    `mle-stream worker --help` load no module of mle_stream.bench; running a bench does (the check can
    fail)."""
    code = (
        "import contextlib, io, sys\n"
        "from mle_stream.cli import main\n"
        "import mle_stream.stream.app, mle_stream.actuator.runner, mle_stream.status.server\n"
        "def bench_modules(): return sorted(m for m in sys.modules if m.startswith('mle_stream.bench'))\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['worker', '--help'])\n"
        "print(bench_modules())\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['bench', 'decisions', '--json', '--rollouts', '4', '--windows', '2'])\n"
        "print(bench_modules())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.splitlines()
    assert before == "[]"
    assert "'mle_stream.bench.decisions'" in after


def test_json_logs_carry_the_decision_fields() -> None:
    """--log-format json: a decision line has model, version, window and command id as fields."""
    code = (
        "import logging, sys\n"
        "from mle_stream.cli import main\n"
        "from mle_stream.stream import processor\n"
        "from mle_stream.core.events import Command, CommandKind\n"
        "from mle_stream.config import Topics\n"
        "from mle_stream.core.topology import load_topology\n"
        "c = Command('c0ffee', CommandKind.ROLLBACK, 'fraud-detector', '1', '2', {'1': 100, '2': 0}, 'worse', "
        "'error-rate', 5000, 10000, '{}', 'p', 10001)\n"
        "t = load_topology('topologies/fraud-detector-canary.yaml')\n"
        "from mle_stream.core.signing import Signer\n"
        "p = processor.StreamProcessor({t.model: t}, Topics(), Signer('test', b'k' * 32))\n"
        "sys.argv = ['mle-stream', '--log-format', 'json', 'validate', 'topologies/']\n"
        "main(sys.argv[1:])\n"
        "p._publish(b'fraud-detector', [c])  # the worker's decision line\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    decision = next(line for line in lines if line["message"].startswith("ROLLBACK fraud-detector"))
    assert {k: decision[k] for k in ("level", "logger", "model", "version", "window_start", "window_end",
                                     "command_id")} == {
        "level": "WARNING", "logger": "mle_stream.stream.processor", "model": "fraud-detector", "version": "2",
        "window_start": 5000, "window_end": 10000, "command_id": "c0ffee"}
    assert decision["time"].endswith("+00:00")


def test_validate_reports_file_and_line(tmp_path: Path) -> None:
    assert mle("validate", str(REPO / "topologies")).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text('model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\nwindows: {size: 5x}\n')
    result = mle("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:5: windows.size: expected a duration" in result.stderr


def test_worker_without_a_signing_key_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLE_SIGNING_KEY", "MLE_VERIFY_KEYS"))}
    result = mle("worker", "-t", str(REPO / "topologies"), env={**env, "MLE_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert "no signing key: set MLE_SIGNING_KEY_FILE" in result.stderr and "openssl rand -hex 32" in result.stderr


def test_a_short_hmac_key_is_refused_at_start_saying_how_to_make_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLE_SIGNING_KEY", "MLE_VERIFY_KEYS"))}
    result = mle("worker", "-t", str(REPO / "topologies"),
                 env={**env, "MLE_SIGNING_KEY": "short-secret", "MLE_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert "MLE_SIGNING_KEY has 12 bytes" in result.stderr and "openssl rand -hex 32" in result.stderr


def test_standalone_broker_serves_the_topics_and_stops_on_sigterm() -> None:
    process = subprocess.Popen([sys.executable, "-m", "mle_stream", "broker", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", first)
        assert match, first + (process.stderr.read() if process.poll() is not None else "")
        topics = AdminClient({"bootstrap.servers": match.group(1)}).list_topics(timeout=10).topics
        assert set(Topics().all()) <= set(topics)
        broker_pid = int(subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                        text=True).stdout.split()[0])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    # The broker process is gone too, not orphaned.
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)


def test_metrics_and_probes_bind_to_the_flag_else_mle_metrics_bind_else_every_interface(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mle_stream.cli import parse_args
    from mle_stream.cli.common import choose_metrics_bind

    monkeypatch.delenv("MLE_METRICS_BIND", raising=False)
    assert choose_metrics_bind(parse_args(["worker", "-t", "x"])) == "0.0.0.0"
    monkeypatch.setenv("MLE_METRICS_BIND", "10.0.0.7")
    assert choose_metrics_bind(parse_args(["worker", "-t", "x"])) == "10.0.0.7"
    assert choose_metrics_bind(parse_args(["worker", "-t", "x", "--metrics-bind", "127.0.0.1"])) == "127.0.0.1"

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


@pytest.mark.parametrize("command", ["broker", "worker", "actuator", "validate", "demo", "command", "actuate"])
def test_every_command_explains_itself(command: str) -> None:
    result = mle(command, "--help")
    assert result.returncode == 0
    assert "MLE_BOOTSTRAP_SERVERS" in result.stdout and "MLE_SIGNING_KEY" in result.stdout
    assert f"usage: mle-stream {command}" in result.stdout


def test_validate_reports_file_and_line(tmp_path: Path) -> None:
    assert mle("validate", str(REPO / "topologies")).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text('model: m\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\nwindows: {size: 5x}\n')
    result = mle("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:5: windows.size: expected a duration" in result.stderr


def test_worker_without_a_signing_key_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLE_SIGNING_KEY"}
    result = mle("worker", "-t", str(REPO / "topologies"), env=env)
    assert result.returncode == 2
    assert "MLE_SIGNING_KEY is not set" in result.stderr


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
        broker_pid = int(subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()[0])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    # The broker process is gone too, not orphaned.
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)

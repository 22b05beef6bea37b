"""The broker is never implicit: the worker and the actuator refuse to start without one, the
embedded broker starts only when asked for, and `mle-stream broker` never leaves it behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mle_stream.cli import main
from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.kafka import configured_servers

REPO = Path(__file__).resolve().parent.parent
NO_BROKER = ("mle-stream {command}: MLE_BOOTSTRAP_SERVERS is not set: set it to the Kafka brokers (host:port,...), "
             "or, for a private in-memory broker that lives as long as this process, pass --embedded-broker or "
             "set MLE_BOOTSTRAP_SERVERS=embedded")


@pytest.mark.parametrize("args", [["worker"], ["actuator", "--gitops-repo", "unused"]])
def test_worker_and_actuator_without_a_broker_exit_2_naming_the_variable_and_both_alternatives(
        args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLE_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("MLE_SIGNING_KEY", "k" * 32)
    assert main([*args, "-t", str(REPO / "topologies")]) == 2
    assert capsys.readouterr().err.strip() == NO_BROKER.format(command=args[0])


def test_a_broker_given_twice_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLE_BOOTSTRAP_SERVERS", "kafka:9092")
    assert main(["worker", "--embedded-broker", "-t", str(REPO / "topologies")]) == 2
    assert capsys.readouterr().err.strip() == ("mle-stream worker: --embedded-broker asks for a broker of this "
                                               "process's own, but MLE_BOOTSTRAP_SERVERS names kafka:9092: drop one "
                                               "of the two")


def test_the_embedded_broker_is_chosen_only_when_asked_for() -> None:
    assert configured_servers(Settings(bootstrap_servers=" kafka-0:9092,kafka-1:9092 ")) == "kafka-0:9092,kafka-1:9092"
    assert configured_servers(Settings(bootstrap_servers="embedded")) is None
    assert configured_servers(Settings(), embedded=True) is None  # --embedded-broker; demo and bench
    with pytest.raises(ConfigError, match="MLE_BOOTSTRAP_SERVERS is not set"):
        configured_servers(Settings(bootstrap_servers="  "))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_a_broker_command_killed_with_sigkill_takes_its_broker_process_with_it() -> None:
    process = subprocess.Popen([sys.executable, "-m", "mle_stream", "broker", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        assert re.search(r"listening on 127\.0\.0\.1:\d+", first), first + process.stderr.read()
        children = _children(process.pid)
        assert [Path(f"/proc/{pid}/exe").resolve().name for pid in children] == ["tansu"]
        process.send_signal(signal.SIGKILL)  # no handler runs, no `finally`: only the kernel can stop Tansu now
        process.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_running, children))
    finally:
        process.kill()
        for pid in filter(_running, children):  # leave no broker behind when the test fails
            os.kill(pid, signal.SIGKILL)

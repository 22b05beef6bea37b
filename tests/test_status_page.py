"""The worker's live status page in a real browser: headless Chromium (Debian's `chromium` package)
loads it while `mle-stream demo` runs, after the rollback; the plots, the decision and the
timeline's rollback entry must be in the DOM the page's own JavaScript built, and none of the forged
commands published meanwhile. The screenshot is kept as a test artifact:
test-artifacts/status-page.png at the top of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from conftest import topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Command, CommandKind
from mle_stream.core.signing import Signer

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "test-artifacts" / "status-page.png"
INSTALL_HINT = ("this test drives headless Chromium and found none on PATH: install it with "
                "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu, as root; scripts/test does it "
                "when run as root), or put a `chromium` binary on PATH")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(INSTALL_HINT)


class Page(HTMLParser):
    """What the test asserts on: each plot's polylines, the timeline entries, decisions and phase.
    (html.parser does not look into <script>, so the page's JS templates never count.)"""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, list[dict[str, str]]] = {}
        self.timeline: list[dict[str, str]] = []
        self.decisions: list[str] = []
        self.phases: list[str] = []
        self._plot: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure" and "data-plot" in a:
            self._plot = a["data-plot"]
            self.plots[self._plot] = []
        elif tag == "polyline" and self._plot is not None:
            self.plots[self._plot].append(a)
        elif tag == "li" and "data-timeline-kind" in a:
            self.timeline.append(a)
        elif tag == "details" and "data-decision-kind" in a:
            self.decisions.append(a["data-decision-kind"])
        elif "data-phase" in a:
            self.phases.append(a["data-phase"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._plot = None


def points(polyline: dict[str, str]) -> int:
    return len(polyline.get("points", "").split())


def api_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/status", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


def rolled_back_with_plots(status: dict[str, Any]) -> bool:
    for m in status["models"]:
        plotted = [v for v in m["versions"] if sum(1 for w in v["windows"] if w["metrics"].get("error_rate")) >= 2]
        applied = [t for t in m["timeline"] if t["source"] == "rollout-event" and t["kind"] == "ROLLBACK"
                   and t["status"] == "APPLIED"]
        if len(plotted) >= 2 and applied:
            return True
    return False


FORGED = 500
# Signs under the demo's own key id with another key: a forgery the page must not show.
FORGER = Signer("demo-worker", b"not the demo's key, the same key id: forged")


def publish_forgeries(bootstrap: str, topics: Topics) -> None:
    """Commands the page must not show: an unsigned APPROVE and a PROMOTE signed with another key of
    the demo's model, and PROMOTEs of FORGED made-up models."""
    def forged(model: str, kind: CommandKind, i: int) -> Command:
        return Command(command_id=f"forged-{i}", kind=kind, model=model, baseline_version="1", candidate_version="2",
                       traffic={"1": 0, "2": 100}, reason="forged", rule="forged", window_start=0, window_end=1,
                       evidence="{}", policy_version="p", issued_at=int(time.time() * 1000))

    producer = Producer({"bootstrap.servers": bootstrap})
    commands = [forged("fraud-detector", CommandKind.APPROVE, -1),
                FORGER.sign(forged("fraud-detector", CommandKind.PROMOTE, -2))]
    commands += [forged(f"forged-model-{i}", CommandKind.PROMOTE, i) for i in range(FORGED)]
    for c in commands:
        producer.produce(topics.commands, key=c.model.encode(), value=wire.encode_command(c))
    assert producer.flush(10) == 0


def test_status_page_shows_plots_decisions_and_the_rollback(tmp_path: Path, kafka_bootstrap: str,
                                                             topics: Topics) -> None:
    browser = chromium()  # before the demo: a missing browser fails at once, saying how to install it
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_WORKER_GROUP": topics.predictions + "worker", "MLE_ACTUATOR_GROUP": topics.predictions + "actuator",
           "MLE_METRICS_PORT": "0"}
    env.pop("MLE_SIGNING_KEY", None)
    demo = subprocess.Popen([sys.executable, "-m", "mle_stream", "demo", "--json", "--workdir", str(tmp_path / "demo"),
                             "--degrade-after", "5", "--keep-running", "120"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    assert demo.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(demo.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        url = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and demo.poll() is None:
            found = next((m.group(1) for line in list(lines) if (m := re.search(r"status page: (http://\S+/)", line))),
                         None)
            if url is None and found:
                url = found
                publish_forgeries(kafka_bootstrap, topics)
            if url is not None:
                try:
                    status = api_status(url)
                    if rolled_back_with_plots(status) and status["ignored"].get("unverified", 0) >= FORGED + 2:
                        break
                except OSError:
                    pass  # the worker is still starting its page
            time.sleep(1)
        else:
            pytest.fail(f"no rollback on the status page ({url}) within 150 s; demo exit {demo.poll()}:\n"
                        + "".join(lines[-40:]))
        assert url is not None

        dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=60)
        assert dom.returncode == 0, dom.stderr[-3000:]
        page = Page()
        page.feed(dom.stdout)

        by_role = {p.get("data-role"): points(p) for p in page.plots.get("error_rate", [])}
        assert by_role.get("baseline", 0) >= 2 and by_role.get("candidate", 0) >= 2, (page.plots, dom.stdout[:3000])
        assert any(points(p) >= 2 for p in page.plots.get("drift", [])), page.plots
        assert "rolled back" in page.phases
        assert "ROLLBACK" in page.decisions
        kinds = {(t["data-timeline-kind"], t.get("data-source"), t.get("data-status")) for t in page.timeline}
        assert ("ROLLBACK", "command", "") in kinds and ("ROLLBACK", "rollout-event", "APPLIED") in kinds
        assert "APPROVE" not in page.decisions and "PROMOTE" not in page.decisions
        assert not {k for k, _, _ in kinds} & {"APPROVE", "PROMOTE"}
        assert "forged-" not in dom.stdout and f"left off: {FORGED + 2} unverified" in dom.stdout

        shot = tmp_path / "status-page.png"
        result = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
                                 "--virtual-time-budget=5000", "--window-size=1400,1800", f"--screenshot={shot}", url],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # the demo stops its worker and actuator on the way out
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(5)

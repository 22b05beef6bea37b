"""The webhook notifier against a real local HTTP server: what it posts, when it retries, and that a
dead webhook neither raises out of nor holds up the actuator's Kafka loop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.actuator.notify import CountingUnverified, NoNotifier, WebhookNotifier, notifier_for, slack_message
from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting
from mle_stream.actuator.runner import run_actuator_loop
from mle_stream.actuator.service import Actuator, epoch_ms
from mle_stream.broker import free_port
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, RolloutEvent, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.verification import hmac_verifier

REPO = Path(__file__).resolve().parent.parent
# One file, not the directory: other topologies there may route through backends this test has no access to.
TOPOLOGY = REPO / "topologies" / "fraud-detector-canary.yaml"
KEY = b"notify-test-key-0123456789abcdef"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
FORGER = Signer(HMAC_KEY_ID, b"not the key, the same key id: a forgery")
VERIFY = hmac_verifier(KEY)
MODEL = "fraud-detector"


class Webhook:
    """A local HTTP server that records each POST and answers with the next status of `statuses`
    (the last one repeats); `hang_s` delays every answer."""

    def __init__(self, statuses: list[int], hang_s: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                time.sleep(hang_s)
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_factory() -> Iterator[type[Webhook]]:
    started: list[Webhook] = []

    class Started(Webhook):
        def __init__(self, statuses: list[int], hang_s: float = 0.0) -> None:
            super().__init__(statuses, hang_s)
            started.append(self)

    yield Started
    for hook in started:
        hook.close()


def unreachable_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def command(kind: CommandKind = CommandKind.ROLLBACK, reason: str = "error rate of v2 is 4.1% vs 1.0% on v1",
            rule: str = "error_rate") -> Command:
    traffic = {"1": 100, "2": 0} if kind is CommandKind.ROLLBACK else {"1": 0, "2": 100}
    return SIGNER.sign(Command(
        command_id=command_id(MODEL, "1", "2", kind, rule, 0, 60_000), kind=kind, model=MODEL,
        baseline_version="1", candidate_version="2", traffic=traffic, reason=reason, rule=rule, window_start=0,
        window_end=60_000, evidence="{}", policy_version="p1", issued_at=epoch_ms()))


def event_for(cmd: Command, status: RolloutStatus, details: str = "route 100% -> v1") -> RolloutEvent:
    return RolloutEvent(event_id="e1", command_id=cmd.command_id, model=cmd.model, action=cmd.kind.value,
                        status=status, route_weights={"1": 100, "2": 0}, champion="1", challenger=None,
                        reason=cmd.reason, details=details, at=62_000)


def test_a_rollback_is_posted_as_a_slack_message(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    cmd = command(reason="precision <down> 30% & more")
    with WebhookNotifier(hook.url, verify=VERIFY) as notifier:
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
        assert notifier.flush(10)
        assert (notifier.delivered, notifier.undelivered) == (1, 0)

    [(headers, _)] = hook.requests
    assert headers["Content-Type"].startswith("application/json")
    [body] = hook.bodies()
    text = body["text"]
    assert isinstance(text, str)
    for expected in (MODEL, "ROLLBACK", "APPLIED", "baseline v1", "candidate v2", cmd.command_id,
                     "precision &lt;down&gt; 30% &amp; more"):  # mrkdwn escaping: no accidental links
        assert expected in text, (expected, text)
    blocks = body["blocks"]
    assert isinstance(blocks, list) and all(b["type"] in ("section", "context") for b in blocks)
    field_texts = [f["text"] for f in blocks[1]["fields"]]
    assert f"*Command id*\n{cmd.command_id}" in field_texts and "*Status*\nAPPLIED" in field_texts
    assert json.loads(json.dumps(body)) == slack_message(event_for(cmd, RolloutStatus.APPLIED), cmd)


def test_failed_and_rejected_commands_are_posted_and_routine_events_are_not(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    promote, rollback = command(CommandKind.PROMOTE), command()
    with WebhookNotifier(hook.url, verify=VERIFY) as notifier:
        notifier.notify(event_for(promote, RolloutStatus.APPLIED), promote)
        notifier.notify(event_for(rollback, RolloutStatus.SKIPPED_DUPLICATE), rollback)
        notifier.notify(event_for(promote, RolloutStatus.FAILED, "route step failed"), promote)
        # Signed, and still rejected (it contradicts itself): its fields are the signer's, so it is described.
        notifier.notify(event_for(rollback, RolloutStatus.REJECTED, "malformed command"), rollback)
        notifier.notify(event_for(rollback, RolloutStatus.DRY_RUN), rollback)
        assert notifier.flush(10)
    statuses = [str(b["text"]).split(": ")[2].split(";")[0] for b in hook.bodies()]
    assert statuses == ["FAILED", "REJECTED", "DRY_RUN"]


def test_a_server_error_is_retried_with_backoff(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([500, 200])
    waits: list[float] = []
    with WebhookNotifier(hook.url, verify=VERIFY, backoff_s=0.05,
                         sleep=lambda s: (waits.append(s), time.sleep(s))) as notifier:
        cmd = command()
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
        assert notifier.flush(10)
        assert (notifier.delivered, notifier.undelivered) == (1, 0)
    assert len(hook.requests) == 2 and hook.requests[0][1] == hook.requests[1][1]
    assert waits == [0.05]


def test_a_refused_payload_is_not_retried_and_a_dead_server_is_given_up(
        webhook_factory: type[Webhook], caplog: pytest.LogCaptureFixture) -> None:
    hook = webhook_factory([404])
    cmd = command()
    with WebhookNotifier(hook.url, verify=VERIFY, backoff_s=0.01) as notifier:
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
        assert notifier.flush(10)
        assert notifier.undelivered == 1
    assert len(hook.requests) == 1  # a 4xx says the request is wrong: repeating it cannot help

    with WebhookNotifier(hook.url, verify=VERIFY, attempts=3, backoff_s=0.01) as notifier:
        hook.statuses = [503]
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
        assert notifier.flush(10)
        assert notifier.undelivered == 1
    assert len(hook.requests) == 4
    assert "secret-token" not in caplog.text and "could not notify http://127.0.0.1" in caplog.text


def test_notify_never_waits_for_the_server(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200], hang_s=3.0)
    cmd = command()
    notifier = WebhookNotifier(hook.url, verify=VERIFY, timeout_s=0.5, attempts=2, backoff_s=0.01)
    started = time.monotonic()
    for _ in range(5):
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
    assert time.monotonic() - started < 0.1
    notifier.close(timeout_s=0.5)  # gives up on what is left instead of waiting for it
    assert time.monotonic() - started < 3.0
    assert notifier.delivered == 0


def test_an_unreachable_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    cmd = command()
    with WebhookNotifier(unreachable_url(), verify=VERIFY, attempts=2, backoff_s=0.01) as notifier:
        notifier.notify(event_for(cmd, RolloutStatus.APPLIED), cmd)
        assert notifier.flush(10)
        assert notifier.undelivered == 1
    assert "attempt 1 of 2" in caplog.text and "could not notify" in caplog.text


def test_factory_and_bad_urls() -> None:
    assert isinstance(notifier_for("", verify=VERIFY), NoNotifier)
    assert isinstance(notifier_for(None, verify=VERIFY), NoNotifier)
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookNotifier("hooks.slack.com/services/T/B/secret", verify=VERIFY)
    with pytest.raises(ValueError, match="http:// or https://") as caught:
        WebhookNotifier("ftp://user:pw@example.com/services/T/B/secret", verify=VERIFY)
    assert "secret" not in str(caught.value) and "pw" not in str(caught.value)
    for bad in ({"limit": -1}, {"window_s": 0.0}):
        with pytest.raises(ValueError, match="MLE_NOTIFY_LIMIT, MLE_NOTIFY_WINDOW"):
            WebhookNotifier("https://hooks.example/services/T/B/secret", verify=VERIFY, **bad)  # type: ignore[arg-type]


@pytest.mark.broker
@pytest.mark.parametrize("reachable", [True, False], ids=["webhook", "unreachable-webhook"])
def test_the_actuator_loop_notifies_and_survives_a_dead_webhook(
        kafka_bootstrap: str, topics: Topics, webhook_factory: type[Webhook], reachable: bool) -> None:
    hook = webhook_factory([200])
    url = hook.url if reachable else unreachable_url()
    routing = InMemoryRouting({MODEL: {"1": 90, "2": 10}})
    registry = InMemoryRegistry({MODEL: ["1", "2"]})
    actuator = Actuator(routing, registry, VERIFIER)
    notifier = WebhookNotifier(url, verify=VERIFY, attempts=2, backoff_s=0.01)
    stop = threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            run_actuator_loop(actuator, kafka_bootstrap, topics, stop, group_id=f"g-{topics.commands}",
                              notifier=notifier)
        except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
            failure.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    forged, good = FORGER.sign(command(rule="forged")), command()
    producer = Producer(producer_config(kafka_bootstrap))
    for cmd in (forged, good, good):
        producer.produce(topics.commands, key=MODEL.encode(), value=wire.encode_command(cmd))
    producer.flush(10)
    try:
        out = read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= 3, timeout_s=60)
        assert thread.is_alive() and not failure
    finally:
        stop.set()
        thread.join(timeout=30)
        notifier.close(timeout_s=10)
    assert not thread.is_alive() and not failure, failure
    events = [wire.decode_rollout_event(m.value()) for m in out]
    assert [e.status.value for e in events] == ["REJECTED", "APPLIED", "SKIPPED_DUPLICATE"]
    assert routing.get_weights(MODEL) == {"1": 100, "2": 0}
    if reachable:
        # The rollback, then at close the summary of the forged one: the duplicate stays quiet, and
        # nothing the forger wrote is posted.
        assert (notifier.delivered, notifier.undelivered) == (2, 0)
        rollback, summary = (str(b["text"]) for b in hook.bodies())
        assert good.command_id in rollback and "APPLIED" in rollback
        assert "rejected 1 command(s) that failed verification" in summary
        assert forged.command_id not in summary and MODEL not in summary
    else:
        assert (notifier.delivered, notifier.undelivered) == (0, 2)


def test_settings_read_the_webhook_from_the_environment() -> None:
    from mle_stream.config import Settings

    settings = Settings.from_env({"MLE_NOTIFY_WEBHOOK": " https://hooks.example/services/T/B/secret "})
    assert settings.notify_webhook == "https://hooks.example/services/T/B/secret"
    assert "secret" not in repr(settings)
    assert Settings.from_env({}).notify_webhook == ""


@pytest.mark.broker
def test_the_actuator_command_posts_to_the_webhook_of_its_environment(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics, webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_SIGNING_KEY": KEY.decode(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLE_ACTUATOR_GROUP": f"actuator-{uuid.uuid4().hex[:8]}",
           "MLE_NOTIFY_WEBHOOK": hook.url}
    args = [sys.executable, "-m", "mle_stream", "actuator", "-t", str(TOPOLOGY),
            "--gitops-repo", str(tmp_path / "gitops")]
    bad = subprocess.run([*args, "--notify-webhook", "hooks.slack.com/services/T/B/secret"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--notify-webhook / MLE_NOTIFY_WEBHOOK: the webhook must be an http" in bad.stderr
    assert "secret" not in bad.stderr
    for flag, message in ((["--notify-window", "soon"], "--notify-window / MLE_NOTIFY_WINDOW must be a duration"),
                          (["--notify-limit", "-1"], "--notify-limit / MLE_NOTIFY_LIMIT must be a whole number")):
        bad = subprocess.run([*args, *flag], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr

    # A flood of forged commands: each rejected and counted, none posted; one summary when the
    # window ends (here: at the stop, which ends every window).
    port = free_port()
    flood = [FORGER.sign(command(rule=f"forged-{i}")) for i in range(200)]
    with open(tmp_path / "actuator.log", "wb") as log_file:
        process = subprocess.Popen([*args, "--metrics-port", str(port), "--metrics-bind", "127.0.0.1"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            producer = Producer(producer_config(kafka_bootstrap))
            for forged in flood:
                producer.produce(topics.commands, key=MODEL.encode(), value=wire.encode_command(forged))
            producer.flush(10)
            out = read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= len(flood), timeout_s=90)
            assert len(out) == len(flood), (tmp_path / "actuator.log").read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                exposition = response.read().decode()
            assert (f'mle_stream_unverified_commands_total{{component="actuator",topic="{topics.commands}"}} '
                    f"{float(len(flood))}") in exposition
            assert not hook.requests  # nothing posted while the window is open
        finally:
            process.terminate()
            process.wait(timeout=30)
    log = (tmp_path / "actuator.log").read_text()
    [body] = hook.bodies()
    assert f"rejected {len(flood)} command(s) that failed verification" in str(body["text"]), log[-3000:]
    assert not any(f.command_id in json.dumps(body) for f in flood)


def failed(cmd: Command, i: int) -> RolloutEvent:
    return replace(event_for(cmd, RolloutStatus.FAILED, f"route step failed ({i})"), event_id=f"e{i}")


def test_posts_are_limited_per_model_and_kind_and_the_rest_summarized(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    rollback, promote = command(), command(CommandKind.PROMOTE)
    other = SIGNER.sign(replace(command(), model="churn", command_id="c-churn"))
    with WebhookNotifier(hook.url, verify=VERIFY, limit=3, window_s=1.0) as notifier:
        for i in range(40):
            notifier.notify(failed(rollback, i), rollback)
        for i in range(5):
            notifier.notify(failed(promote, i), promote)  # another kind: its own limit
            notifier.notify(failed(other, i), other)  # another model: its own limit
        assert notifier.flush(10)
        assert len(hook.requests) == 9 and notifier.suppressed == 37 + 2 + 2
        time.sleep(1.5)  # the window ends: one summary per key that suppressed something
        assert notifier.flush(10)
        texts = [str(b["text"]) for b in hook.bodies()[9:]]
        assert sorted(texts) == sorted([
            f"mle-stream: 37 more ROLLBACK FAILED notification(s) of model {MODEL} suppressed in the last 1 s (at "
            "most 3 per model and kind every 1 s); the rollout-events topic has every one.",
            f"mle-stream: 2 more PROMOTE FAILED notification(s) of model {MODEL} suppressed in the last 1 s (at "
            "most 3 per model and kind every 1 s); the rollout-events topic has every one.",
            "mle-stream: 2 more ROLLBACK FAILED notification(s) of model churn suppressed in the last 1 s (at "
            "most 3 per model and kind every 1 s); the rollout-events topic has every one."])
        notifier.notify(failed(rollback, 99), rollback)  # a new window: posted again
        assert notifier.flush(10) and len(hook.requests) == 13
    assert len(hook.requests) == 13  # nothing was suppressed in the new window: no summary at close


def test_a_flood_of_forged_commands_is_one_summary_without_their_content(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    counted: list[None] = []
    webhook = WebhookNotifier(hook.url, verify=VERIFY, window_s=0.5)
    notifier = CountingUnverified(webhook, VERIFY, lambda: counted.append(None))
    good = command()
    for i in range(5000):
        name = f"forged-model-{i}"
        cmd = Command(command_id=f"f{i}", kind=CommandKind.ROLLBACK, model=name, baseline_version="1",
                      candidate_version="2", traffic={"1": 100}, reason=f"<!channel> click http://evil/{i}",
                      rule="r", window_start=0, window_end=1, evidence="{}", policy_version="p", issued_at=1,
                      signature="é" * 64 if i % 2 else "")  # a non-ASCII signature broke verify()
        notifier.notify(replace(event_for(cmd, RolloutStatus.REJECTED, "signature does not match"), model=name), cmd)
    notifier.notify(event_for(good, RolloutStatus.APPLIED), good)
    assert webhook.flush(10)
    assert [good.command_id in str(b["text"]) for b in hook.bodies()] == [True]  # the real one is not held up
    deadline = time.monotonic() + 5
    while len(hook.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    notifier.close()
    assert len(hook.requests) == 2 and len(counted) == 5000 and webhook.unverified == 5000
    summary = json.dumps(hook.bodies()[1])
    assert "rejected 5000 command(s) that failed verification" in summary
    assert "forged-model" not in summary and "evil" not in summary and "channel" not in summary


def test_close_posts_the_summaries_of_open_windows(webhook_factory: type[Webhook]) -> None:
    hook = webhook_factory([200])
    rollback = command()
    with WebhookNotifier(hook.url, verify=VERIFY, limit=0) as notifier:  # summaries only
        for i in range(3):
            notifier.notify(failed(rollback, i), rollback)
        assert notifier.flush(10) and not hook.requests
    [body] = hook.bodies()
    assert f"3 more ROLLBACK FAILED notification(s) of model {MODEL} suppressed" in str(body["text"])

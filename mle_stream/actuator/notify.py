"""Tell people what the actuator did: a notifier gets every rollout event and decides what to say.

`Notifier` is the port (as Flagger has one per side effect), `NoNotifier` the no-op and
`WebhookNotifier` the adapter for any Slack-compatible incoming webhook (Slack, Mattermost,
Rocket.Chat, ...): it POSTs `{"text": ..., "blocks": [...]}` where `text` alone says everything
(model, versions, status, reason, command id) for receivers that ignore Block Kit.

What is worth a message: a ROLLBACK that was applied (or would be, in a dry run), and any command
the actuator FAILED to apply or REJECTED. Duplicates, promotions and traffic steps stay quiet: the
rollout events topic has them.

The actuator must never wait for a chat server, so `notify` only queues the message; one
background thread posts it, retrying a refused or unanswered post a few times with a short
backoff, and logs what it could not deliver. A webhook URL is a secret (the token is in its
path), so logs name only its scheme and host.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from mle_stream.core.events import Command, RolloutEvent, RolloutStatus
from mle_stream.retry import Backoff, RetriesExhausted, retrying

log = logging.getLogger(__name__)

# Slack's limits: a section's text up to 3000 characters, a field's up to 2000.
_SECTION_MAX = 3000
_FIELD_MAX = 2000


class Notifier(Protocol):
    def notify(self, event: RolloutEvent, command: Command) -> None:
        """Report `event` (the outcome of `command`) if it is worth a message; never raises, never blocks long."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, for at most `timeout_s`, then stop."""


class NoNotifier:
    """Tells nobody."""

    def notify(self, event: RolloutEvent, command: Command) -> None:
        pass

    def close(self, timeout_s: float = 10.0) -> None:
        pass


def worth_notifying(event: RolloutEvent) -> bool:
    """A rollback done (or one a dry run would do), or any command that failed or was rejected."""
    if event.status in (RolloutStatus.FAILED, RolloutStatus.REJECTED):
        return True
    return event.action == "ROLLBACK" and event.status in (RolloutStatus.APPLIED, RolloutStatus.DRY_RUN)


def _escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup: a reason containing them must not become a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(event: RolloutEvent, command: Command) -> dict[str, Any]:
    """The webhook body for `event`: `text` complete on its own, `blocks` laying it out for Slack."""
    # A REJECTED command's fields are unverified: whoever forged it chose them.
    unverified = " (unverified)" if event.status is RolloutStatus.REJECTED else ""
    versions = f"baseline v{command.baseline_version} / candidate v{command.candidate_version}{unverified}"
    headline = f"mle-stream: {event.action} of model {event.model}{unverified}: {event.status.value}"
    route = ", ".join(f"v{v} {p}%" for v, p in sorted(event.route_weights.items())) or "unknown"
    text = (f"{headline}; {versions}; reason: {event.reason or '-'}; command {event.command_id}; "
            f"route now {route}; {event.details}")
    fields = [("Model", event.model + unverified), ("Status", event.status.value), ("Versions", versions),
              ("Command id", event.command_id), ("Route now", route),
              ("Aliases", f"champion v{event.champion or '-'}, challenger v{event.challenger or '-'}")]
    return {
        "text": _escape(_cut(text, _SECTION_MAX)),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(_cut(headline, _SECTION_MAX - 2))}*"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": _escape(_cut(f"*{name}*\n{value}", _FIELD_MAX))}
                                           for name, value in fields]},
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": _escape(_cut(f"Reason: {event.reason or '-'}", _SECTION_MAX))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(_cut(event.details or "-",
                                                                                   _SECTION_MAX))}]},
        ],
    }


def redact(url: str) -> str:
    """scheme://host of a webhook URL: its path is a secret."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: say so rather than fail while reporting another problem
        port = ":?"
    return f"{parts.scheme}://{parts.hostname or '?'}{port}/…"


class WebhookNotifier:
    """POST a Slack-compatible message for each rollout event worth one (see the module docstring).

    url: the incoming webhook (http or https). timeout_s: one attempt's limit. attempts: tries per
    message; between them it waits backoff_s, then twice that, and so on. max_pending: messages
    queued beyond this are dropped (and logged) rather than piling up behind a dead server.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, attempts: int = 3, backoff_s: float = 0.5,
                 max_pending: int = 100, sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"the webhook's port is not a number: {redact(url)}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the webhook must be an http:// or https:// URL, got {redact(url)}")
        if timeout_s <= 0 or max_pending < 1:
            raise ValueError(f"timeout_s > 0 and max_pending >= 1 are required, got {timeout_s}, {max_pending}")
        self._backoff = Backoff(attempts, backoff_s, max(backoff_s, 30.0))
        self._url = url
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._sleep = sleep
        self._pending: deque[tuple[RolloutEvent, Command]] = deque()
        self._busy = False
        self._closed = False
        self._changed = threading.Condition()
        self.delivered = 0
        self.undelivered = 0
        self._thread = threading.Thread(target=self._run, name="mle-stream-notify", daemon=True)
        self._thread.start()

    def notify(self, event: RolloutEvent, command: Command) -> None:
        if not worth_notifying(event):
            return
        with self._changed:
            if self._closed or len(self._pending) >= self._max_pending:
                self.undelivered += 1
                log.error("notification of %s %s (command %s) dropped: the notifier is %s", event.status.value,
                          event.action, event.command_id, "closed" if self._closed else
                          f"{self._max_pending} messages behind ({redact(self._url)})")
                return
            self._pending.append((event, command))
            self._changed.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message is delivered or given up; False when `timeout_s` ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        if not self.flush(timeout_s):
            log.error("stopping with %d notification(s) not delivered to %s", len(self._pending), redact(self._url))
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=1.0)

    def __enter__(self) -> "WebhookNotifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    self.undelivered += len(self._pending)
                    return
                event, command = self._pending.popleft()
                self._busy = True
            try:
                delivered = self._deliver(event, command)
            except Exception:  # a bug here must not kill the thread: later rollbacks still need reporting
                log.exception("notifying command %s failed", event.command_id)
                delivered = False
            with self._changed:
                self._busy = False
                self.delivered += delivered
                self.undelivered += not delivered
                self._changed.notify_all()

    def _deliver(self, event: RolloutEvent, command: Command) -> bool:
        body = json.dumps(slack_message(event, command)).encode()
        what = f"{event.status.value} {event.action} of {event.model} (command {event.command_id})"

        def post() -> None:
            request = urllib.request.Request(self._url, data=body, method="POST",
                                             headers={"Content-Type": "application/json; charset=utf-8"})
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()

        def transient(exc: Exception) -> str | None:
            if isinstance(exc, urllib.error.HTTPError):  # (an OSError too: look at it first)
                # Any other 4xx: the request itself is wrong (bad payload, revoked URL); repeating it cannot help.
                return f"HTTP {exc.code} {exc.reason}" if exc.code == 429 or exc.code >= 500 else None
            if isinstance(exc, (OSError, ValueError)):  # refused, unreachable, timed out, a broken response
                return f"{type(exc).__name__}: {exc}"
            return None

        def on_retry(attempt: int, why: str, delay: float) -> None:
            log.warning("webhook %s refused or did not answer %s (attempt %d of %d): %s", redact(self._url), what,
                        attempt, self._backoff.attempts, why)

        try:
            retrying(post, self._backoff, transient, on_retry, self._sleep)
            log.info("notified %s of %s", redact(self._url), what)
            return True
        except RetriesExhausted as exc:
            problem = exc.last
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
        log.error("could not notify %s of %s: %s; the rollout event is on the rollout-events topic regardless",
                  redact(self._url), what, problem)
        return False


def notifier_for(url: str | None, **options: Any) -> Notifier:
    """A WebhookNotifier for `url`, or the no-op when there is none."""
    return WebhookNotifier(url, **options) if url else NoNotifier()

"""Tell people what the actuator did: a notifier gets every rollout event and decides what to say.

`Notifier` is the port (as Flagger has one per side effect), `NoNotifier` the no-op and
`WebhookNotifier` the adapter for any Slack-compatible incoming webhook (Slack, Mattermost,
Rocket.Chat, ...): it POSTs `{"text": ..., "blocks": [...]}` where `text` alone says everything
(model, versions, status, reason, command id) for receivers that ignore Block Kit.

What is worth a message: a ROLLBACK that was applied (or would be, in a dry run), and any verified
command the actuator FAILED to apply or REJECTED. Duplicates, promotions and traffic steps stay
quiet: the rollout events topic has them.

Only verified commands are described (the notifier takes a `Verifier`, mle_stream/verification.py):
anyone who can write to the commands topic can forge one, and its model, versions and reason are
then the forger's words. The actuator rejects such a command; the notifier counts it and, at the end
of the window, posts one summary ("N commands that failed verification were rejected") that repeats
nothing of their content. And no chat channel can take a flood, so posts are rate-limited per model
and kind (action and status): at most `limit` per `window_s` (MLE_NOTIFY_LIMIT, MLE_NOTIFY_WINDOW;
5 per 10 minutes by default); the rest are counted and summarized in one post when the window ends.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from mle_stream.core.events import Command, RolloutEvent, RolloutStatus
from mle_stream.redact import redact_uri
from mle_stream.retry import Backoff, RetriesExhausted, retrying
from mle_stream.verification import Verifier

log = logging.getLogger(__name__)

# Slack's limits: a section's text up to 3000 characters, a field's up to 2000.
_SECTION_MAX = 3000
_FIELD_MAX = 2000

# Posts per model and kind per window: a rollout has a handful of rollbacks or failures worth a
# message; more than that in ten minutes is a loop or an attack, and one summary says it as well.
DEFAULT_LIMIT = 5
DEFAULT_WINDOW_S = 600.0
# The rate-limit key of commands that failed verification: their model and kind are the forger's,
# so they share one key, and its limit is 0 (summaries only).
_UNVERIFIED = ("", "unverified")


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
    # Only verified commands get here (WebhookNotifier.notify), so every field is the signer's.
    versions = f"baseline v{command.baseline_version} / candidate v{command.candidate_version}"
    headline = f"mle-stream: {event.action} of model {event.model}: {event.status.value}"
    route = ", ".join(f"v{v} {p}%" for v, p in sorted(event.route_weights.items())) or "unknown"
    text = (f"{headline}; {versions}; reason: {event.reason or '-'}; command {event.command_id}; "
            f"route now {route}; {event.details}")
    fields = [("Model", event.model), ("Status", event.status.value), ("Versions", versions),
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


def summary_message(text: str) -> dict[str, Any]:
    """The webhook body of a rate-limit summary: one line, the same in `text` and in the block."""
    text = _escape(_cut(text, _SECTION_MAX))
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


@dataclass
class _Window:
    """One rate-limit key's current window: when it opened, what was posted and suppressed in it."""

    opened: float
    posted: int = 0
    suppressed: int = 0


class WebhookNotifier:
    """POST a Slack-compatible message for each rollout event worth one (see the module docstring).

    url: the incoming webhook (http or https). verify: says whether a command comes from a trusted
    signer; only those are described. limit, window_s: at most `limit` posts per model and kind per
    `window_s` seconds, the rest summarized when the window ends (limit 0: summaries only).
    timeout_s: one attempt's limit. attempts: tries per message; between them it waits backoff_s,
    then twice that, and so on. max_pending: messages queued beyond this are dropped (and logged)
    rather than piling up behind a dead server.
    """

    def __init__(self, url: str, *, verify: Verifier, limit: int = DEFAULT_LIMIT,
                 window_s: float = DEFAULT_WINDOW_S, timeout_s: float = 5.0, attempts: int = 3,
                 backoff_s: float = 0.5, max_pending: int = 100, sleep: Callable[[float], None] = time.sleep) -> None:
        self._where = redact_uri(url, keep_path=False)
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"the webhook's port is not a number: {self._where}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the webhook must be an http:// or https:// URL, got {self._where}")
        if timeout_s <= 0 or max_pending < 1:
            raise ValueError(f"timeout_s > 0 and max_pending >= 1 are required, got {timeout_s}, {max_pending}")
        if limit < 0 or not window_s > 0:
            raise ValueError(f"the rate limit needs limit >= 0 posts per window_s > 0 seconds, got {limit} per "
                             f"{window_s} (MLE_NOTIFY_LIMIT, MLE_NOTIFY_WINDOW)")
        self._backoff = Backoff(attempts, backoff_s, max(backoff_s, 30.0))
        self._url = url
        self._verify = verify
        self._limit = limit
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._sleep = sleep
        self._windows: dict[tuple[str, str], _Window] = {}
        self._pending: deque[tuple[str, dict[str, Any]]] = deque()  # (what, body)
        self._busy = False
        self._closed = False
        self._changed = threading.Condition()
        self.delivered = 0
        self.undelivered = 0
        self.suppressed = 0
        self.unverified = 0
        self._thread = threading.Thread(target=self._run, name="mle-stream-notify", daemon=True)
        self._thread.start()

    def notify(self, event: RolloutEvent, command: Command) -> None:
        verified = self._verify(command)
        if verified and not worth_notifying(event):
            return
        with self._changed:
            now = time.monotonic()
            self._end_windows(now)
            if not verified:
                self.unverified += 1
                self._window(_UNVERIFIED, now).suppressed += 1
                self._changed.notify_all()  # the thread must wake when this window ends, to summarize it
                return
            key = (event.model, f"{event.action} {event.status.value}")
            window = self._window(key, now)
            if window.posted >= self._limit:
                window.suppressed += 1
                self.suppressed += 1
                self._changed.notify_all()
                return
            window.posted += 1
            self._queue(f"{event.status.value} {event.action} of {event.model} (command {event.command_id})",
                        slack_message(event, command))

    def _window(self, key: tuple[str, str], now: float) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(now)
        return window

    def _end_windows(self, now: float, everything: bool = False) -> None:
        """Close the windows that are over (all with `everything`), queuing a summary for each that
        suppressed something. Called with the lock held."""
        for key, window in list(self._windows.items()):
            if not everything and now - window.opened < self._window_s:
                continue
            del self._windows[key]
            if window.suppressed:
                self._queue(f"summary of {key[1]} {key[0]}".strip(), summary_message(self._summary(key, window, now)))

    def _summary(self, key: tuple[str, str], window: _Window, now: float) -> str:
        seconds = f"{min(now - window.opened, self._window_s):.0f} s"
        if key == _UNVERIFIED:
            text = (f"mle-stream: the actuator rejected {window.suppressed} command(s) that failed verification in "
                    f"the last {seconds}. Their model, versions and reason are not shown: whoever forged them wrote "
                    "them. A signing key out of step, or someone writing to the commands topic: see the metric "
                    "mle_stream_unverified_commands_total and the actuator's log.")
        else:
            model, kind = key
            text = (f"mle-stream: {window.suppressed} more {kind} notification(s) of model {model} suppressed in "
                    f"the last {seconds} (at most {self._limit} per model and kind every {self._window_s:.0f} s); "
                    "the rollout-events topic has every one.")
        log.warning("%s", text)
        return text

    def _queue(self, what: str, body: dict[str, Any]) -> None:
        """Queue one post. Called with the lock held."""
        if self._closed or len(self._pending) >= self._max_pending:
            self.undelivered += 1
            log.error("notification of %s dropped: the notifier is %s", what, "closed" if self._closed else
                      f"{self._max_pending} messages behind ({self._where})")
            return
        self._pending.append((what, body))
        self._changed.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message is delivered or given up; False when `timeout_s` ran out first.
        Windows still open stay open: their summaries come when they end, or at `close`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """End every window (posting its summary), deliver what is queued for at most `timeout_s`, stop."""
        with self._changed:
            self._end_windows(time.monotonic(), everything=True)
        if not self.flush(timeout_s):
            log.error("stopping with %d notification(s) not delivered to %s", len(self._pending), self._where)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=1.0)

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_window_end(self) -> float | None:
        """Seconds until the first window with something to summarize ends; None when there is none."""
        ends = [w.opened + self._window_s for w in self._windows.values() if w.suppressed]
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._end_windows(time.monotonic())
                    if not self._pending:
                        self._changed.wait(self._next_window_end())
                if self._closed:
                    self.undelivered += len(self._pending)
                    return
                what, body = self._pending.popleft()
                self._busy = True
            try:
                delivered = self._deliver(what, body)
            except Exception:  # a bug here must not kill the thread: later rollbacks still need reporting
                log.exception("notifying %s failed", what)
                delivered = False
            with self._changed:
                self._busy = False
                self.delivered += delivered
                self.undelivered += not delivered
                self._changed.notify_all()

    def _deliver(self, what: str, message: dict[str, Any]) -> bool:
        body = json.dumps(message).encode()

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
            log.warning("webhook %s refused or did not answer %s (attempt %d of %d): %s", self._where, what,
                        attempt, self._backoff.attempts, why)

        try:
            retrying(post, self._backoff, transient, on_retry, self._sleep)
            log.info("notified %s of %s", self._where, what)
            return True
        except RetriesExhausted as exc:
            problem = exc.last
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
        log.error("could not notify %s of %s: %s; the rollout event is on the rollout-events topic regardless",
                  self._where, what, problem)
        return False


def notifier_for(url: str | None, *, verify: Verifier, **options: Any) -> Notifier:
    """A WebhookNotifier for `url`, or the no-op when there is none."""
    return WebhookNotifier(url, verify=verify, **options) if url else NoNotifier()


class CountingUnverified:
    """A Notifier in front of another that reports each command `verify` refuses to `count` first
    (the actuator's mle_stream_unverified_commands_total), whether or not a webhook is configured."""

    def __init__(self, inner: Notifier, verify: Verifier, count: Callable[[], None]) -> None:
        self._inner = inner
        self._verify = verify
        self._count = count

    def notify(self, event: RolloutEvent, command: Command) -> None:
        if not self._verify(command):
            self._count()
        self._inner.notify(event, command)

    def close(self, timeout_s: float = 10.0) -> None:
        self._inner.close(timeout_s)

"""A small client of the Confluent Schema Registry's REST API: writer schemas by id, their subjects,
and registering a schema under a subject.

Only the documented endpoints mle-stream needs: `GET /schemas/ids/{id}`, `GET
/schemas/ids/{id}/versions` and `POST /subjects/{subject}/versions`, over HTTP or HTTPS (a CA,
a client certificate and key) with optional basic auth (`user:password`, as Confluent's
`basic.auth.user.info`). A schema id names one schema forever, so every answer is cached. An id the
registry does not know is remembered as unknown for UNKNOWN_ID_TTL_S (at most UNKNOWN_IDS_KEPT ids):
anyone who can write to a topic could otherwise cost the worker, and the registry, one request per
message by sending random ids; a schema registered after its id was asked for is read once that
time has passed (producers register before they write, so this is rare).

Errors, so that a caller can tell the producer's fault from the registry's:

    SchemaRegistryError        the registry answered with something unusable (e.g. a Protobuf schema)
     ├── SchemaNotFound        the registry answered: no schema has this id (404)
     └── RegistryUnavailable   no usable answer: connection refused, timeout, 5xx, 401/403, garbage

`writer_schema` waits out an unavailable registry (docs/schema-registry.md): it retries with
exponential backoff, logging each failure, until the registry answers or `close()` is called (then
it raises RegistryUnavailable), so that no message is dead-lettered for the registry's outage. The
password never appears in a log line or an error (mle_stream/redact.py).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mle_stream.errors import ConfigError, MleStreamError
from mle_stream.redact import redact_text, redact_uri
from mle_stream.retry import Backoff

log = logging.getLogger(__name__)

UNKNOWN_ID_TTL_S = 60.0
UNKNOWN_IDS_KEPT = 10_000

__all__ = ["RegistryUnavailable", "SchemaNotFound", "SchemaRegistryClient", "SchemaRegistryError",
           "SchemaRegistrySettings", "WriterSchemas", "client_for"]


class SchemaRegistryError(MleStreamError):
    """Anything that went wrong talking to the Schema Registry."""


class SchemaNotFound(SchemaRegistryError):
    """The registry answered that it knows no schema with this id."""

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(f"the schema registry knows no schema id {schema_id} ({detail})")
        self.schema_id = schema_id


class RegistryUnavailable(SchemaRegistryError):
    """No usable answer from the registry: not the fault of the message that needed it."""


class WriterSchemas(Protocol):
    """What the decoders need from a registry: the writer schema of an id, and (for error messages only)
    the subjects it is registered under."""

    def writer_schema(self, schema_id: int) -> str:
        """The schema's JSON text; raises RegistryUnavailable when the registry cannot answer, another
        SchemaRegistryError (SchemaNotFound) when its answer is no Avro schema."""
        ...

    def subjects(self, schema_id: int) -> list[str]:
        """`subject (version n)` for each registration of the id; [] when the registry cannot say."""
        ...


@dataclass(frozen=True)
class SchemaRegistrySettings:
    """MLE_SCHEMA_REGISTRY_URL and its credentials (read by mle_stream.config.Settings.from_env).

    url: empty means no registry: Confluent-framed messages are then dead letters that say so.
    basic_auth_user_info: `user:password` (Confluent's basic.auth.user.info); empty: no auth.
    ssl_ca_location / ssl_certificate_location / ssl_key_location: PEM files for HTTPS (a CA to trust
    instead of the system's, and a client certificate and its key for mutual TLS);
    ssl_key_password: the key's password when it is encrypted.
    """

    url: str = ""
    basic_auth_user_info: str = field(default="", repr=False)
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: str = field(default="", repr=False)


def client_for(settings: SchemaRegistrySettings, **kwargs: Any) -> SchemaRegistryClient | None:
    """The client of the configured registry (keyword arguments as SchemaRegistryClient's); None
    without MLE_SCHEMA_REGISTRY_URL."""
    return SchemaRegistryClient(settings, **kwargs) if settings.url else None


def _ssl_context(settings: SchemaRegistrySettings) -> ssl.SSLContext | None:
    if not settings.url.lower().startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=settings.ssl_ca_location or None)
    if settings.ssl_certificate_location:
        # A password even when empty: without one OpenSSL would prompt on the terminal for an encrypted key.
        context.load_cert_chain(settings.ssl_certificate_location, settings.ssl_key_location or None,
                                password=settings.ssl_key_password)
    return context


class SchemaRegistryClient:
    """The registry at `settings.url`; see the module docstring. Thread-safe."""

    def __init__(self, settings: SchemaRegistrySettings, *, timeout_s: float = 10.0,
                 backoff: Backoff = Backoff(attempts=1, base_delay_s=0.5, max_delay_s=30.0),
                 on_retry: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """`backoff` paces the retries of `writer_schema` (its `attempts` is not used: it retries
        until the registry answers or `close()`); `on_retry(reason)` is told of each failed attempt."""
        if not settings.url:
            raise ValueError("a schema registry client needs a URL (MLE_SCHEMA_REGISTRY_URL)")
        # Credentials in the URL (https://user:password@host) are basic auth too, as Confluent's
        # basic.auth.credentials.source=URL; urllib would take them for part of the host name.
        parts = urllib.parse.urlsplit(settings.url)
        user_info = settings.basic_auth_user_info
        if parts.username is not None:
            netloc = parts.netloc.rpartition("@")[2]
            user_info = user_info or urllib.parse.unquote(parts.netloc.rpartition("@")[0])
            parts = parts._replace(netloc=netloc)
        self._base = urllib.parse.urlunsplit(parts).rstrip("/")
        self._shown = redact_uri(self._base)
        self._secrets = (settings.url, f"x://{user_info}@x", f"x://x?password={settings.ssl_key_password}")
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        if user_info:
            token = base64.b64encode(user_info.encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        try:
            self._ssl = _ssl_context(settings)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"MLE_SCHEMA_REGISTRY_SSL_*: cannot load the CA or client certificate: {exc}") from None
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._on_retry = on_retry
        self._schemas: dict[int, str] = {}
        self._subjects: dict[int, list[str]] = {}  # for dead letters: asked once per id, not per message
        # Ids the registry answered 404 for -> (when, its answer), oldest first (see the module docstring).
        self._unknown: collections.OrderedDict[int, tuple[float, str]] = collections.OrderedDict()
        self._unknown_lock = threading.Lock()
        self._clock = clock
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """The registry's URL without credentials, for messages."""
        return self._shown

    def close(self) -> None:
        """Stop waiting for an unavailable registry: a waiting `writer_schema` raises RegistryUnavailable."""
        self._closed.set()

    def writer_schema(self, schema_id: int) -> str:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        self._known_unknown(schema_id)
        failures = 0
        while True:
            try:
                doc = self._request("GET", f"/schemas/ids/{schema_id}",
                                    not_found=lambda d: self._not_found(schema_id, d))
                schema = doc.get("schema") if isinstance(doc, dict) else None
                if not isinstance(schema, str):
                    raise RegistryUnavailable(f"the schema registry at {self._shown} answered schema id "
                                              f"{schema_id} without a 'schema' string")
                break
            except RegistryUnavailable as exc:
                failures += 1
                delay = self._backoff.delay(failures)
                log.warning("schema id %d: %s; retrying in %.1f s (attempt %d); the messages that need it wait",
                            schema_id, exc, delay, failures)
                if self._on_retry is not None:
                    self._on_retry(str(exc))
                if self._closed.wait(delay):
                    raise RegistryUnavailable(f"{exc}; gave up after {failures} attempts: the client was closed") \
                        from exc
        kind = doc.get("schemaType", "AVRO")
        if kind != "AVRO":
            raise SchemaRegistryError(f"schema id {schema_id} is a {kind} schema, not Avro")
        self._schemas[schema_id] = schema
        return schema

    def _known_unknown(self, schema_id: int) -> None:
        """Raise SchemaNotFound if the registry answered 404 for this id less than UNKNOWN_ID_TTL_S ago."""
        with self._unknown_lock:
            seen = self._unknown.get(schema_id)
            if seen is None:
                return
            when, detail = seen
            ago = self._clock() - when
            if ago >= UNKNOWN_ID_TTL_S:
                del self._unknown[schema_id]
                return
        raise SchemaNotFound(schema_id, f"{detail}, {ago:.0f} s ago; asked again after {UNKNOWN_ID_TTL_S:.0f} s")

    def _not_found(self, schema_id: int, detail: str) -> SchemaNotFound:
        with self._unknown_lock:
            self._unknown.pop(schema_id, None)
            self._unknown[schema_id] = (self._clock(), detail)
            while len(self._unknown) > UNKNOWN_IDS_KEPT:
                self._unknown.popitem(last=False)
        return SchemaNotFound(schema_id, detail)

    def subjects(self, schema_id: int) -> list[str]:
        if schema_id in self._subjects:
            return self._subjects[schema_id]
        if schema_id in self._unknown:
            return []
        try:
            doc = self._request("GET", f"/schemas/ids/{schema_id}/versions",
                                not_found=lambda d: SchemaNotFound(schema_id, d))
        except SchemaRegistryError:
            return []
        if not isinstance(doc, list):
            return []
        subjects = [f"{d.get('subject')} (version {d.get('version')})" for d in doc if isinstance(d, dict)]
        self._subjects[schema_id] = subjects
        return subjects

    def register(self, subject: str, schema: str) -> int:
        """Register `schema` (Avro JSON text) under `subject`; its id (the existing one if it is
        registered already). One attempt: raises SchemaRegistryError."""
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        doc = self._request("POST", path, body={"schema": schema},
                            not_found=lambda d: SchemaRegistryError(f"cannot register {subject}: {d}"))
        schema_id = doc.get("id") if isinstance(doc, dict) else None
        if type(schema_id) is not int:
            raise RegistryUnavailable(f"the schema registry at {self._shown} answered a registration of "
                                      f"{subject} without an id")
        self._schemas[schema_id] = schema
        return schema_id

    def _request(self, method: str, path: str, *, not_found: Callable[[str], Exception],
                 body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/vnd.schemaregistry.v1+json"
        request = urllib.request.Request(self._base + path, data=data, headers=headers, method=method)
        where = f"{method} {self._shown}{path}"
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s, context=self._ssl) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self._error_detail(exc)
            if exc.code == 404:
                raise not_found(f"{where}: 404 {detail}") from None
            if exc.code in (401, 403):
                raise RegistryUnavailable(f"{where}: {exc.code} {detail}: check "
                                          "MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO") from None
            if exc.code == 422 or exc.code == 409:
                raise SchemaRegistryError(f"{where}: {exc.code} {detail}") from None
            raise RegistryUnavailable(f"{where}: {exc.code} {detail}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS failures, a malformed URL
            reason = getattr(exc, "reason", exc)
            raise RegistryUnavailable(redact_text(f"{where}: no answer ({reason})", *self._secrets)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RegistryUnavailable(f"{where}: the answer is not JSON ({raw[:80]!r})") from None

    def _error_detail(self, exc: urllib.error.HTTPError) -> str:
        try:
            doc = json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            doc = {}
        message = doc.get("message") if isinstance(doc, dict) else None
        text = f"{exc.reason}: {message}" if message else str(exc.reason)
        return redact_text(text, *self._secrets)

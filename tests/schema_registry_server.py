"""A small Confluent Schema Registry for the tests: an in-process HTTP server on loopback.

It implements only the documented REST endpoints that confluent-kafka's AvroSerializer and
mle-stream call, with Confluent's answers and error codes:

- `POST /subjects/{subject}/versions` -> `{"id": n}` (the same schema text keeps its id, across subjects)
- `GET /schemas/ids/{id}` -> `{"schema": "..."}`, or 404 with error_code 40403
- `GET /schemas/ids/{id}/versions` -> `[{"subject": ..., "version": ...}]`

and basic auth (401 with error_code 401 for a missing or wrong `Authorization`), over HTTPS when
given a server-side TLS context. No compatibility checks: the tests register incompatible
schemas on purpose, as a registry set to NONE allows.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


class SchemaRegistry:
    def __init__(self, user_info: str | None = "alice:s3cret-pw", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.user_info = user_info
        self.schemas: list[str] = []  # id - 1 -> schema text
        self.subjects: dict[str, list[int]] = {}  # subject -> ids by version
        self.requests: list[str] = []  # "GET /schemas/ids/1", in order
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                registry._serve(self, "GET", None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                registry._serve(self, "POST", body)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "http" if tls is None else "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SchemaRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def register(self, subject: str, schema: str) -> int:
        with self._lock:
            if schema in self.schemas:
                schema_id = self.schemas.index(schema) + 1
            else:
                self.schemas.append(schema)
                schema_id = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def _serve(self, handler: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urlsplit(handler.path).path
        self.requests.append(f"{method} {path}")
        if self.user_info is not None:
            expected = "Basic " + base64.b64encode(self.user_info.encode()).decode()
            if handler.headers.get("Authorization") != expected:
                return _answer(handler, 401, {"error_code": 401, "message": "Unauthorized"})
        if method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)/versions", path)):
            try:
                schema = json.loads(body or b"")["schema"]
            except (ValueError, KeyError, TypeError):
                return _answer(handler, 422, {"error_code": 42201, "message": "Invalid schema"})
            return _answer(handler, 200, {"id": self.register(unquote(m.group(1)), schema)})
        if method == "GET" and (m := re.fullmatch(r"/schemas/ids/(\d+)(/versions)?", path)):
            schema_id = int(m.group(1))
            if not 1 <= schema_id <= len(self.schemas):
                return _answer(handler, 404, {"error_code": 40403, "message": "Schema not found"})
            if m.group(2):
                return _answer(handler, 200, [{"subject": s, "version": v.index(schema_id) + 1}
                                              for s, v in sorted(self.subjects.items()) if schema_id in v])
            return _answer(handler, 200, {"schema": self.schemas[schema_id - 1]})
        _answer(handler, 404, {"error_code": 404, "message": f"HTTP 404 Not Found: {method} {path}"})


def _answer(handler: BaseHTTPRequestHandler, status: int, doc: Any) -> None:
    raw = json.dumps(doc).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)

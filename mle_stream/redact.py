"""Credentials out of every URI a log line, an error message or a printout shows.

An MLflow tracking URI may carry a user and a password (`https://user:token@host`,
`postgresql://user:pw@db/mlflow`) or a token in its query (`?token=...`); a webhook URL carries its
token in the path; a Kafka bootstrap list is `host:port,...` but nothing stops someone from writing
`SASL_SSL://user:pw@host:9093`. Every place that shows one of them passes it through `redact_uri`
(or `redact_servers` for a comma-separated list) first: the host stays readable, so an error still
says where, and the secret never reaches a log collector.

The rules are deliberately blunt, because a secret in a log cannot be taken back and a little too
much redaction costs nothing:

- everything between `scheme://` (or the start, without a scheme) and the last `@` before the query
  is the user information, replaced whole by `***` (a password with an unencoded `@`, `/` or `:` is
  still covered);
- a query or fragment parameter whose name contains token, password, passwd, pwd, secret, key,
  sig, credential or auth keeps its name, its value becomes `***`;
- `keep_path=False` (webhooks) drops the path, query and fragment altogether: `https://host/…`.

A library's own error message may repeat the URI it was given, or pieces of it (MLflow's does:
"API request to http://user:token@host/... failed ... with url: /?token=..."): `redact_text` takes
such a text and the URIs it may quote, and masks every URI in it and every secret of those URIs.
"""

from __future__ import annotations

import re

MASK = "***"

# Substrings of a parameter name whose value is treated as secret ("key" also covers api_key,
# apikey, access_key; "sig" covers sig, signature, X-Amz-Signature).
_SECRET_NAMES = ("token", "password", "passwd", "pwd", "secret", "key", "sig", "credential", "auth")
# "_" is not in RFC 3986's scheme characters, but Kafka's listener names (SASL_SSL://) use it.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-_]*://")


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]*://[^\s'\"<>]+")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(s in lowered for s in _SECRET_NAMES)


def _redact_params(params: str) -> str:
    out = []
    for pair in re.split(r"([&;])", params):
        if pair in ("&", ";"):
            out.append(pair)
            continue
        name, sep, _ = pair.partition("=")
        out.append(f"{name}={MASK}" if sep and _is_secret(name) else pair)
    return "".join(out)


def redact_uri(uri: str, *, keep_path: bool = True) -> str:
    """`uri` without its credentials (see the module docstring); anything else is returned unchanged,
    so a plain `sqlite:///mlflow.db` or `localhost:9092` reads as before."""
    match = _SCHEME.match(uri)
    scheme = match.group(0) if match else ""
    rest = uri[len(scheme):]
    # The query starts at the first "?" or "#": the user information can only be before it.
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    before, after = rest[:cut], rest[cut:]
    at = before.rfind("@")
    if at >= 0:
        before = f"{MASK}{before[at:]}"
    if not keep_path:
        slash = before.find("/", before.rfind("@") + 1)
        host = before if slash < 0 else before[:slash]
        return f"{scheme}{host}/…"
    if after:
        after = "".join(part if part in ("?", "#") else _redact_params(part) for part in re.split(r"([?#])", after))
    return f"{scheme}{before}{after}"


def redact_servers(servers: str) -> str:
    """A comma-separated list of servers (Kafka's bootstrap.servers), each one redacted."""
    return ",".join(redact_uri(s) for s in servers.split(","))


def _secrets(uri: str) -> list[str]:
    """The user information and the secret parameters' values of `uri`, as written in it."""
    match = _SCHEME.match(uri)
    rest = uri[match.end() if match else 0:]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    userinfo = rest[:rest.rfind("@", 0, cut)] if "@" in rest[:cut] else ""
    found = [userinfo, userinfo.partition(":")[2]] if userinfo else []  # the password may appear alone
    for pair in re.split(r"[?#&;]", rest[cut:]):
        name, sep, value = pair.partition("=")
        if sep and value and _is_secret(name):
            found.append(value)
    return found


def redact_text(text: str, *uris: str) -> str:
    """`text` (an error message) with every URI in it redacted, and every secret of `uris` masked
    wherever it appears, whole URI or not."""
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    for secret in sorted({s for uri in uris for s in _secrets(uri) if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text

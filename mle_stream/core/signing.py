"""Command signatures: who may sign, and checking that a command was signed by a known key.

A signature lives in the command's `signature` string, so the Avro schema does not change with
the algorithm:

    ed25519:<key_id>:<signature, base64url without padding (86 characters)>
    hmac-sha256:<key_id>:<HMAC-SHA256, lower-case hex (64 characters)>

It covers `canonical_bytes(command)`: the JSON object of every field but `signature`, keys
sorted, no whitespace (separators "," and ":"), non-ASCII characters as themselves (not \\u
escapes), UTF-8; `kind` is the enum's string, `traffic` an object. Any language can rebuild
those bytes from a decoded command and check the signature.

A `Signer` holds one private key (Ed25519) or one shared secret (HMAC, at least 32 bytes) under
a key id. A `Verifier` maps key ids to public keys or secrets; `verify` answers which key id
signed a command, or None for anything else, and never raises, whatever the command holds:
commands arrive from a topic anyone with write access can publish to. Revoking a key is
removing its id from the verifier's keys.

A signature without a key id (the bare hex HMAC of earlier releases) is not accepted: it names
no key to check it with, and a command that old has no expiry either (see core/commands.py).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mle_stream.core.commands import DEFAULT_TTL_MS
from mle_stream.core.events import Command

ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"
ALGORITHMS = (ED25519, HMAC_SHA256)
# An HMAC secret shorter than SHA-256's output weakens the MAC below its design strength.
MIN_HMAC_KEY_BYTES = 32

# Key ids end up in file names (<key_id>.pub), MLflow tags and the signature itself, where ':'
# separates the parts: letters, digits, '.', '_' and '-' only.
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64URL_SIG = re.compile(r"[A-Za-z0-9_-]{86}")

SecretOrPrivate = Ed25519PrivateKey | bytes
SecretOrPublic = Ed25519PublicKey | bytes


class UnsignableCommand(ValueError):
    """A command whose fields have no canonical form (a lone surrogate, a value JSON cannot hold)."""


def check_key_id(key_id: str) -> str:
    """`key_id`, or ValueError saying what a key id may hold."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1-64 characters: letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return key_id


def canonical_bytes(command: Command) -> bytes:
    """The bytes a signature covers (see the module docstring); UnsignableCommand when there are none."""
    try:
        fields = {f.name: getattr(command, f.name) for f in dataclasses.fields(command) if f.name != "signature"}
        fields["kind"] = command.kind.value
        fields["traffic"] = dict(command.traffic)
        # allow_nan=False: NaN and Infinity are not JSON, so another language could not rebuild the bytes.
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")  # strict: a lone surrogate has no UTF-8 form
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise UnsignableCommand(f"command {getattr(command, 'command_id', '?')!r} has no canonical form: "
                                f"{type(exc).__name__}: {exc}") from exc


def _hmac_hex(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _check_hmac_secret(secret: bytes, key_id: str) -> bytes:
    if not isinstance(secret, bytes) or len(secret) < MIN_HMAC_KEY_BYTES:
        size = len(secret) if isinstance(secret, bytes) else type(secret).__name__
        raise ValueError(f"HMAC key {key_id!r} has {size} bytes; it needs at least {MIN_HMAC_KEY_BYTES}: "
                         "make one with `openssl rand -hex 32`")
    return secret


@dataclass(frozen=True)
class Verified:
    """Which key signed a command that verified."""

    key_id: str
    algorithm: str


class Signer:
    """Signs commands with one key under one key id.

    key: an Ed25519 private key, or the bytes of an HMAC secret (at least 32 bytes).
    ttl_ms: how long a command stays valid after it was issued, stamped as `expires_at` on
    commands that carry none (the signer vouches for a command, so it says for how long).
    """

    def __init__(self, key_id: str, key: SecretOrPrivate, *, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        check_key_id(key_id)
        if isinstance(key, Ed25519PrivateKey):
            self.algorithm = ED25519
        else:
            _check_hmac_secret(key, key_id)
            self.algorithm = HMAC_SHA256
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be a whole number of milliseconds > 0, got {ttl_ms!r}")
        self.key_id = key_id
        self.ttl_ms = ttl_ms
        self._key = key

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes, *, ttl_ms: int = DEFAULT_TTL_MS) -> Signer:
        """A signer from a PEM (PKCS#8) Ed25519 private key, as `mle-stream keys generate` writes it."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"the private key is {type(key).__name__}, not Ed25519: make one with "
                             "`mle-stream keys generate`")
        return cls(key_id, key, ttl_ms=ttl_ms)

    def sign(self, command: Command) -> Command:
        """`command` with its expiry set (when it has none) and signed; UnsignableCommand when it cannot be."""
        if not command.expires_at:
            command = dataclasses.replace(command, expires_at=command.issued_at + self.ttl_ms)
        message = canonical_bytes(command)
        if isinstance(self._key, Ed25519PrivateKey):
            raw = base64.urlsafe_b64encode(self._key.sign(message)).rstrip(b"=").decode("ascii")
        else:
            raw = _hmac_hex(self._key, message)
        return dataclasses.replace(command, signature=f"{self.algorithm}:{self.key_id}:{raw}")

    def verifier(self) -> Verifier:
        """A verifier that knows only this signer's key (its public half, for Ed25519)."""
        key = self._key.public_key() if isinstance(self._key, Ed25519PrivateKey) else self._key
        return Verifier({self.key_id: key})

    def public_pem(self) -> bytes:
        """The PEM (SubjectPublicKeyInfo) of the public key; ValueError for an HMAC signer, which has none."""
        if not isinstance(self._key, Ed25519PrivateKey):
            raise ValueError(f"signer {self.key_id!r} uses a shared HMAC secret: it has no public key")
        return public_pem(self._key.public_key())

    def __repr__(self) -> str:  # never the key
        return f"Signer(key_id={self.key_id!r}, algorithm={self.algorithm!r}, ttl_ms={self.ttl_ms})"


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its PEM; ValueError when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the public key is {type(key).__name__}, not Ed25519")
    return key


def public_key_from_base64(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from the base64url of its 32 raw bytes (MLE_VERIFY_KEYS); ValueError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not the base64url of a 32-byte Ed25519 public key: {exc}") from None


def public_key_base64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Verifier:
    """Key id -> Ed25519 public key or HMAC secret; tells which key signed a command."""

    def __init__(self, keys: Mapping[str, SecretOrPublic]) -> None:
        checked: dict[str, SecretOrPublic] = {}
        for key_id, key in keys.items():
            check_key_id(key_id)
            if not isinstance(key, Ed25519PublicKey):
                _check_hmac_secret(key, key_id)
            checked[key_id] = key
        self._keys = checked

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def verify(self, command: Command) -> Verified | None:
        """The key that signed `command` as it is now, or None: unsigned, unknown key id, a
        signature that does not match, or fields that cannot be signed at all. Never raises."""
        try:
            return self._verify(command)
        except Exception:  # noqa: BLE001 - hostile input must answer "not verified", never crash the caller
            return None

    def _verify(self, command: Command) -> Verified | None:
        signature = command.signature
        if not isinstance(signature, str):
            return None
        algorithm, _, rest = signature.partition(":")
        key_id, _, raw = rest.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            return None
        try:
            message = canonical_bytes(command)
        except UnsignableCommand:
            return None
        if algorithm == ED25519 and isinstance(key, Ed25519PublicKey):
            if not _B64URL_SIG.fullmatch(raw):
                return None
            signed = base64.urlsafe_b64decode(raw + "==")
            if base64.urlsafe_b64encode(signed).rstrip(b"=").decode("ascii") != raw:
                return None  # stray bits in the last character: one signature, one spelling
            try:
                key.verify(signed, message)
            except InvalidSignature:
                return None
            return Verified(key_id, ED25519)
        if algorithm == HMAC_SHA256 and isinstance(key, bytes):
            # Both sides ASCII (the pattern checked it), as compare_digest on str requires.
            if _HEX64.fullmatch(raw) and hmac.compare_digest(_hmac_hex(key, message), raw):
                return Verified(key_id, HMAC_SHA256)
        return None

    def __repr__(self) -> str:  # the ids, never a secret
        return f"Verifier(key_ids={list(self.key_ids)!r})"

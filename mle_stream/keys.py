"""Command keys from files and the environment: the Signer and the Verifier each component uses.

- `signer_from_settings`: the key a component signs with. MLE_SIGNING_KEY_FILE (an Ed25519
  private key, PEM, as `mle-stream keys generate` writes it; in Kubernetes a Secret volume) or
  MLE_SIGNING_KEY (a shared HMAC secret of at least 32 bytes), not both.
- `verifier_from_settings`: the keys a component accepts signatures from. Every `<key_id>.pub`
  in MLE_VERIFY_KEYS_DIR, every `key_id:base64url` entry of MLE_VERIFY_KEYS, and MLE_SIGNING_KEY
  (a shared secret verifies what it signs). The actuator, the worker (operators' APPROVEs) and the
  status page use it.
- `generate_key_pair`: `<key_id>.key` (private, mode 0600) and `<key_id>.pub` in a directory.

Everything that can go wrong is a ConfigError naming the variable or file and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mle_stream.config import Settings
from mle_stream.core.signing import (
    MIN_HMAC_KEY_BYTES,
    SecretOrPublic,
    Signer,
    Verifier,
    check_key_id,
    public_key_base64,
    public_key_from_base64,
    public_key_from_pem,
    public_pem,
)
from mle_stream.errors import ConfigError

HMAC_KEY_ID = "hmac"  # MLE_SIGNING_KEY's key id unless MLE_SIGNING_KEY_ID names another
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_HOW_TO_GENERATE = "mle-stream keys generate --key-id NAME --out DIR"


def _hmac_problem(secret: bytes) -> str | None:
    if len(secret) < MIN_HMAC_KEY_BYTES:
        return (f"MLE_SIGNING_KEY has {len(secret)} bytes, fewer than the {MIN_HMAC_KEY_BYTES} an HMAC-SHA256 key "
                "needs: make one with `openssl rand -hex 32` (or switch to Ed25519 keys: " + _HOW_TO_GENERATE + ")")
    return None


def _key_id(settings: Settings, fallback: str, variable: str) -> str:
    key_id = settings.signing_key_id or fallback
    try:
        return check_key_id(key_id)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def signer_from_settings(settings: Settings, *, key_file: Path | None = None, key_id: str | None = None) -> Signer:
    """The signer the settings name; `key_file` / `key_id` (an operator's --key-file / --key-id) win."""
    if key_file is None and settings.signing_key_file and settings.signing_key:
        raise ConfigError("both MLE_SIGNING_KEY_FILE and MLE_SIGNING_KEY are set: a component signs with one key; "
                          "unset MLE_SIGNING_KEY to sign with the Ed25519 key file")
    path = key_file or (Path(settings.signing_key_file) if settings.signing_key_file else None)
    if path is not None:
        where = str(path) if key_file is not None else f"MLE_SIGNING_KEY_FILE {path}"
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the signing key: {exc.strerror or exc}") from None
        chosen = key_id or _key_id(settings, path.stem, "MLE_SIGNING_KEY_ID (or the key file's name)")
        try:
            return Signer.from_pem(chosen, pem, ttl_ms=settings.command_ttl_ms)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}; make a key pair with {_HOW_TO_GENERATE}") from None
    if settings.signing_key:
        problem = _hmac_problem(settings.signing_key)
        if problem:
            raise ConfigError(problem)
        return Signer(key_id or _key_id(settings, HMAC_KEY_ID, "MLE_SIGNING_KEY_ID"), settings.signing_key,
                      ttl_ms=settings.command_ttl_ms)
    raise ConfigError(
        "no signing key: set MLE_SIGNING_KEY_FILE to an Ed25519 private key (make a pair with "
        f"{_HOW_TO_GENERATE}; give the public key to whoever verifies), or MLE_SIGNING_KEY to a shared secret, "
        "e.g. export MLE_SIGNING_KEY=$(openssl rand -hex 32)"
    )


def verifier_from_settings(settings: Settings) -> Verifier:
    """Every key the settings accept signatures from (see the module docstring); ConfigError when none."""
    keys: dict[str, SecretOrPublic] = {}
    sources: dict[str, str] = {}

    def add(key_id: str, key: SecretOrPublic, source: str) -> None:
        if key_id in keys:
            raise ConfigError(f"key id {key_id!r} is given twice, by {sources[key_id]} and by {source}: "
                              "each key needs its own id")
        keys[key_id] = key
        sources[key_id] = source

    if settings.verify_keys_dir:
        for key_id, key, path in _public_keys_in(Path(settings.verify_keys_dir)):
            add(key_id, key, str(path))
    for entry in filter(None, re.split(r"[\s,]+", settings.verify_keys)):
        key_id, sep, encoded = entry.partition(":")
        try:
            if not sep:
                raise ValueError("expected key_id:base64url")
            add(check_key_id(key_id), public_key_from_base64(encoded), "MLE_VERIFY_KEYS")
        except ValueError as exc:
            raise ConfigError(f"MLE_VERIFY_KEYS entry {entry[:80]!r}: {exc} (`mle-stream keys generate` prints the "
                              "entry of a new key)") from None
    if settings.signing_key:
        problem = _hmac_problem(settings.signing_key)
        if problem:
            raise ConfigError(problem)
        add(_key_id(settings, HMAC_KEY_ID, "MLE_SIGNING_KEY_ID"), settings.signing_key, "MLE_SIGNING_KEY")
    if not keys:
        raise ConfigError(
            "no keys to verify commands with: set MLE_VERIFY_KEYS_DIR to a directory of <key_id>.pub public keys "
            f"(the worker's and each operator's; {_HOW_TO_GENERATE} makes a pair), or MLE_SIGNING_KEY to the "
            "secret the signers share (openssl rand -hex 32)"
        )
    return Verifier(keys)


def _public_keys_in(directory: Path) -> list[tuple[str, Ed25519PublicKey, Path]]:
    try:
        # Kubernetes mounts a Secret's files through hidden ..data links: only the visible names count.
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(PUBLIC_SUFFIX) and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"MLE_VERIFY_KEYS_DIR {directory}: cannot list it: {exc.strerror or exc}") from None
    found = []
    for path in paths:
        try:
            key_id = check_key_id(path.stem)
            found.append((key_id, public_key_from_pem(path.read_bytes()), path))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}; a public key file is <key_id>.pub as {_HOW_TO_GENERATE} writes it; "
                              "remove or fix it") from None
    return found


def generate_key_pair(key_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Write `<key_id>.key` (PKCS#8 PEM, mode 0600) and `<key_id>.pub` (PEM) into `out_dir`.

    Refuses to overwrite either file: replacing a key by accident would lock its signer out.
    """
    try:
        check_key_id(key_id)
    except ValueError as exc:
        raise ConfigError(f"--key-id: {exc}") from None
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / f"{key_id}{PRIVATE_SUFFIX}", out_dir / f"{key_id}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists: not overwriting a key; pick another --key-id or --out, or remove it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the start (O_EXCL: never through an existing file), not chmod-ed afterwards.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private)
        public_path.write_bytes(public_pem(key.public_key()))
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot write the key pair: {exc.strerror or exc}") from None
    return private_path, public_path


def verify_keys_entry(public_path: Path) -> str:
    """The MLE_VERIFY_KEYS entry (`key_id:base64url`) of a public key file."""
    return f"{public_path.stem}:{public_key_base64(public_key_from_pem(public_path.read_bytes()))}"

"""Keys from files and the environment (mle_stream/keys.py) and `mle-stream keys generate`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mle_stream.config import Settings
from mle_stream.core.events import Command, CommandKind
from mle_stream.core.signing import Verified
from mle_stream.errors import ConfigError
from mle_stream.keys import generate_key_pair, signer_from_settings, verifier_from_settings, verify_keys_entry

SECRET = "0123456789abcdef0123456789abcdef"
COMMAND = Command(
    command_id="abc", kind=CommandKind.ROLLBACK, model="fraud", baseline_version="1", candidate_version="2",
    traffic={"1": 100, "2": 0}, reason="worse", rule="r", window_start=0, window_end=10, evidence="{}",
    policy_version="p", issued_at=5,
)


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_generate_writes_a_private_key_only_its_owner_reads_and_a_public_key(tmp_path: Path) -> None:
    private, public = generate_key_pair("worker", tmp_path / "keys")
    assert (private.name, public.name) == ("worker.key", "worker.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="exists: not overwriting"):
        generate_key_pair("worker", tmp_path / "keys")
    with pytest.raises(ConfigError, match="--key-id"):
        generate_key_pair("a:b", tmp_path / "keys")


def test_a_worker_key_file_signs_and_a_directory_of_public_keys_verifies(tmp_path: Path) -> None:
    generate_key_pair("worker", tmp_path / "worker")
    generate_key_pair("alice", tmp_path / "alice")
    public = tmp_path / "public"
    public.mkdir()
    for name in ("worker", "alice"):
        (public / f"{name}.pub").write_bytes((tmp_path / name / f"{name}.pub").read_bytes())
    (public / "README").write_text("not a key: ignored")

    worker = signer_from_settings(settings(MLE_SIGNING_KEY_FILE=str(tmp_path / "worker" / "worker.key"),
                                           MLE_COMMAND_TTL="10m"))
    assert (worker.key_id, worker.algorithm, worker.ttl_ms) == ("worker", "ed25519", 600_000)
    alice = signer_from_settings(settings(), key_file=tmp_path / "alice" / "alice.key")
    verifier = verifier_from_settings(settings(MLE_VERIFY_KEYS_DIR=str(public)))
    assert verifier.key_ids == ("alice", "worker")
    assert verifier.verify(worker.sign(COMMAND)) == Verified("worker", "ed25519")
    assert verifier.verify(alice.sign(COMMAND)) == Verified("alice", "ed25519")

    # Revoking alice: her public key leaves the directory.
    (public / "alice.pub").unlink()
    assert verifier_from_settings(settings(MLE_VERIFY_KEYS_DIR=str(public))).verify(alice.sign(COMMAND)) is None


def test_public_keys_from_the_environment_and_a_shared_secret(tmp_path: Path) -> None:
    _, public = generate_key_pair("ops", tmp_path)
    ops = signer_from_settings(settings(), key_file=tmp_path / "ops.key")
    verifier = verifier_from_settings(settings(MLE_VERIFY_KEYS=verify_keys_entry(public), MLE_SIGNING_KEY=SECRET))
    assert verifier.key_ids == ("hmac", "ops")
    assert verifier.verify(ops.sign(COMMAND)) == Verified("ops", "ed25519")
    shared = signer_from_settings(settings(MLE_SIGNING_KEY=SECRET, MLE_SIGNING_KEY_ID="team"))
    assert (shared.key_id, shared.algorithm) == ("team", "hmac-sha256")


@pytest.mark.parametrize("env, message", [
    ({}, "no signing key: set MLE_SIGNING_KEY_FILE"),
    ({"MLE_SIGNING_KEY": "short"}, "MLE_SIGNING_KEY has 5 bytes.*openssl rand -hex 32"),
    ({"MLE_SIGNING_KEY": SECRET, "MLE_SIGNING_KEY_FILE": "/x.key"}, "both MLE_SIGNING_KEY_FILE and MLE_SIGNING_KEY"),
    ({"MLE_SIGNING_KEY_FILE": "/nonexistent/worker.key"}, "MLE_SIGNING_KEY_FILE /nonexistent/worker.key: cannot read"),
    ({"MLE_SIGNING_KEY": SECRET, "MLE_SIGNING_KEY_ID": "a b"}, "MLE_SIGNING_KEY_ID: key id"),
])
def test_signer_configuration_errors_say_what_to_do(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        signer_from_settings(settings(**env))


def test_verifier_configuration_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no keys to verify commands with"):
        verifier_from_settings(settings())
    with pytest.raises(ConfigError, match="MLE_VERIFY_KEYS_DIR .*cannot list it"):
        verifier_from_settings(settings(MLE_VERIFY_KEYS_DIR=str(tmp_path / "missing")))
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match=r"bad\.pub: not a PEM public key"):
        verifier_from_settings(settings(MLE_VERIFY_KEYS_DIR=str(tmp_path)))
    with pytest.raises(ConfigError, match="MLE_VERIFY_KEYS entry 'ops'"):
        verifier_from_settings(settings(MLE_VERIFY_KEYS="ops"))
    (tmp_path / "bad.pub").unlink()
    _, public = generate_key_pair("hmac", tmp_path)
    with pytest.raises(ConfigError, match="key id 'hmac' is given twice"):
        verifier_from_settings(settings(MLE_VERIFY_KEYS_DIR=str(tmp_path), MLE_SIGNING_KEY=SECRET))
    with pytest.raises(ConfigError, match="MLE_COMMAND_TTL"):
        settings(MLE_COMMAND_TTL="soon")


def test_keys_generate_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mle_stream", "keys", "generate", "--key-id", "alice",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr
    assert "alice.key" in result.stdout and "MLE_VERIFY_KEYS entry: alice:" in result.stdout
    entry = result.stdout.rsplit("MLE_VERIFY_KEYS entry: ", 1)[1].strip()
    alice = signer_from_settings(settings(), key_file=tmp_path / "alice.key")
    assert verifier_from_settings(settings(MLE_VERIFY_KEYS=entry)).verify(alice.sign(COMMAND)) is not None

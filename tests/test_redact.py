"""redact_uri: no credential of a URI survives it, whatever the URI holds; and the components that
log the MLflow tracking URI, the webhook and the bootstrap servers log them redacted."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mle_stream.errors import ActuationError
from mle_stream.mlflow_registry import MlflowRegistry
from mle_stream.profiles import ProfileError, load_from_mlflow
from mle_stream.redact import MASK, redact_servers, redact_text, redact_uri

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-T0ken"

# A password may hold anything a careless user types, "@", "/" and ":" included; not "?" or "#",
# which end the authority of any URI (percent-encoded, they are plain characters again).
secrets_ = st.text(st.characters(exclude_characters="?#", codec="utf-8"), min_size=4, max_size=20)
hosts = st.from_regex(r"[a-z][a-z0-9.-]{0,15}(:[0-9]{1,5})?", fullmatch=True)
paths = st.from_regex(r"(/[A-Za-z0-9._-]{0,10}){0,3}", fullmatch=True)
schemes = st.sampled_from(["http://", "https://", "postgresql://", "mysql+pymysql://", "SASL_SSL://", ""])
names = st.sampled_from(["token", "access_token", "password", "api_key", "X-Amz-Signature", "client_secret", "auth"])


def refused_uri(userinfo: str = f"mlflow:{SECRET}@") -> str:
    """An http URI with credentials on a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://{userinfo}127.0.0.1:{port}/?token={SECRET}"


@given(scheme=schemes, user=st.text(st.characters(exclude_characters="?#@"), max_size=8), password=secrets_,
       host=hosts, path=paths)
def test_user_information_never_survives(scheme: str, user: str, password: str, host: str, path: str) -> None:
    uri = f"{scheme}{user}:{password}@{host}{path}"
    assume(password not in f"{scheme}{host}{path}")
    redacted = redact_uri(uri)
    assert password not in redacted
    assert redacted == f"{scheme}{MASK}@{host}{path}"  # the host and path still say where
    assert redact_uri(redacted) == redacted


@given(scheme=schemes, host=hosts, path=paths, name=names, secret=secrets_,
       other=st.from_regex(r"[a-z]{1,5}=[a-z0-9]{0,5}", fullmatch=True))
def test_secret_query_parameters_never_survive(scheme: str, host: str, path: str, name: str, secret: str,
                                               other: str) -> None:
    assume("&" not in secret and ";" not in secret and secret not in f"{scheme}{host}{path}{name}{other}")
    uri = f"{scheme}{host}{path}?{other}&{name}={secret}#x"
    redacted = redact_uri(uri)
    assert secret not in redacted and f"{name}={MASK}" in redacted and other in redacted


@given(scheme=schemes, host=hosts, path=paths)
def test_uris_without_credentials_are_unchanged(scheme: str, host: str, path: str) -> None:
    assert redact_uri(f"{scheme}{host}{path}") == f"{scheme}{host}{path}"


@given(scheme=schemes, user=st.from_regex(r"[a-z]{1,6}", fullmatch=True), password=secrets_, host=hosts,
       token=st.from_regex(r"[A-Za-z0-9_-]{6,20}", fullmatch=True), around=st.text(max_size=20))
def test_a_message_quoting_the_uri_or_its_pieces_loses_the_secrets(scheme: str, user: str, password: str, host: str,
                                                                   token: str, around: str) -> None:
    uri = f"{scheme}{user}:{password}@{host}/?access_token={token}"
    assume(password not in f"{scheme}{host}{around}" and token not in f"{scheme}{host}{around}{password}")
    # As MLflow words it: the whole URI, then its query again, then the password on its own.
    message = f"API request to {uri}/api/2.0 failed {around} with url: /?access_token={token}/api ({password})"
    redacted = redact_text(message, uri)
    assert password not in redacted and token not in redacted and host in redacted


def test_the_forms_in_use() -> None:
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact_uri("https://user:tok@mlflow.example:5000/?x=1&token=abc") == \
        "https://***@mlflow.example:5000/?x=1&token=***"
    assert redact_uri("postgresql://u:p@ss/w0rd@db/mlflow") == "postgresql://***@db/mlflow"
    # A webhook's token is its path.
    assert redact_uri("https://hooks.slack.com/services/T0/B0/XYZ", keep_path=False) == "https://hooks.slack.com/…"
    assert redact_servers("SASL_SSL://u:p@k1:9093,u:p@k2:9093") == "SASL_SSL://***@k1:9093,***@k2:9093"
    assert redact_servers("k1:9092,k2:9092") == "k1:9092,k2:9092"


def test_the_mlflow_registry_logs_and_raises_without_the_credentials(caplog: pytest.LogCaptureFixture) -> None:
    registry = MlflowRegistry(refused_uri(), attempts=2, base_delay_s=0.01, max_delay_s=0.01)
    with caplog.at_level(logging.DEBUG), pytest.raises(ActuationError) as raised:
        registry.aliases("fraud-detector")
    assert "attempt 1 of 2" in caplog.text and "127.0.0.1" in caplog.text  # it did log the URI
    assert SECRET not in caplog.text and SECRET not in str(raised.value)
    assert "http://***@127.0.0.1" in str(raised.value) and "token=***" in str(raised.value)


def test_profiles_name_mlflow_without_the_credentials() -> None:
    with pytest.raises(ProfileError) as raised:
        load_from_mlflow("fraud-detector", 1, tracking_uri=refused_uri())
    assert SECRET not in str(raised.value) and "MLflow at http://***@127.0.0.1" in str(raised.value)


def test_the_cli_prints_no_credentials_of_the_tracking_uri(tmp_path: Path) -> None:
    # profile build --log-to-mlflow names the tracking URI in what it prints, on success and failure.
    data = tmp_path / "train.csv"
    data.write_text("amount,country\n" + "".join(f"{i},DE\n" for i in range(50)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": refused_uri(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-m", "mle_stream", "profile", "build", str(data), "--model",
                             "fraud-detector", "--version", "1", "--log-to-mlflow"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode != 0 and "127.0.0.1" in result.stderr, result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr

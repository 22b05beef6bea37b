"""Kafka TLS / SASL settings without a broker: the environment and properties-file mapping, the
errors for wrong settings, secrets kept out of reprs and errors, and both client libraries'
own validation of what we hand them (librdkafka at construction, aiokafka through Faust's
credentials translation). The live TLS and SASL round trips are in test_kafka_secured.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, KafkaException, Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.kafka import admin_client, bootstrap_servers, consumer_config, producer_config
from mle_stream.kafka_security import PLAINTEXT, PROPERTIES, KafkaSecurity, env_variable
from mle_stream.stream.credentials import faust_credentials
from secured_broker import KEY_PASSWORD, Pki, make_pki

SASL_PASSWORD = "sasl-pass-Zq81"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def mtls_env(pki: Pki) -> dict[str, str]:
    return {"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CA_LOCATION": str(pki.ca),
            "MLE_KAFKA_SSL_CERTIFICATE_LOCATION": str(pki.client_cert),
            "MLE_KAFKA_SSL_KEY_LOCATION": str(pki.client_key), "MLE_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}


def sasl_env(mechanism: str, protocol: str = "SASL_SSL") -> dict[str, str]:
    return {"MLE_KAFKA_SECURITY_PROTOCOL": protocol, "MLE_KAFKA_SASL_MECHANISM": mechanism,
            "MLE_KAFKA_SASL_USERNAME": "alice", "MLE_KAFKA_SASL_PASSWORD": SASL_PASSWORD}


def test_each_variable_is_its_librdkafka_property(pki: Pki) -> None:
    env = {**mtls_env(pki), **sasl_env("scram-sha-512"), "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"}
    assert set(env) == {env_variable(p) for p in PROPERTIES}
    assert KafkaSecurity.from_env(env).librdkafka_config() == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": str(pki.ca),
            "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key), "ssl.key.password": KEY_PASSWORD,
        "ssl.endpoint.identification.algorithm": "none", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice",
        "sasl.password": SASL_PASSWORD}


def test_nothing_set_is_plaintext_and_changes_no_client_config() -> None:
    security = Settings.from_env({}).kafka_security
    assert security == PLAINTEXT and security.librdkafka_config() == {} and faust_credentials(security) is None
    assert producer_config("b:9092", security=security) == producer_config("b:9092")
    assert "security.protocol" not in consumer_config("b:9092", "g")


def test_properties_file_then_variables_override_it(pki: Pki, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(f"# copied from the cluster's client.properties\n\n"
                     f"security.protocol = SASL_SSL\n! a Java-style comment\nsasl.mechanism=SCRAM-SHA-256\n"
                     f"sasl.username=bob\nsasl.password={SASL_PASSWORD}=with=equals\nssl.ca.location={pki.ca}\n")
    from_file = KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props)})
    assert (from_file.protocol, from_file.sasl_mechanism, from_file.sasl_username, from_file.sasl_password) == (
        "SASL_SSL", "SCRAM-SHA-256", "bob", f"{SASL_PASSWORD}=with=equals")
    overridden = KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props), "MLE_KAFKA_SASL_USERNAME": "carol",
                                         "MLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    assert (overridden.sasl_username, overridden.sasl_mechanism, overridden.ca_location) == (
        "carol", "SCRAM-SHA-512", str(pki.ca))
    props.write_text(props.read_text() + "ssl.certificate.location=/no/such/client.pem\n")
    with pytest.raises(ConfigError, match=rf"{props}:9: /no/such/client.pem does not exist"):
        KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props)})


@pytest.mark.parametrize("env, message", [
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a SASL mechanism: set MLE_KAFKA_SASL_MECHANISM"),
    ({**sasl_env("PLAIN"), "MLE_KAFKA_SASL_PASSWORD": ""}, "set MLE_KAFKA_SASL_PASSWORD"),
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MLE_KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL"),
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"},
     "MLE_KAFKA_SSL_CA_LOCATION: /no/such/ca.pem does not exist"),
    ({"MLE_KAFKA_SSL_CA_LOCATION": "/etc/hostname"},
     "MLE_KAFKA_SSL_CA_LOCATION set, but security.protocol is PLAINTEXT"),
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SASL_USERNAME": "alice"},
     "MLE_KAFKA_SASL_USERNAME set, but security.protocol is SSL"),
    ({**sasl_env("PLAIN", "SASL_PLAINTEXT"), "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"},
     "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM set, but security.protocol is SASL_PLAINTEXT"),
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/hostname"},
     "MLE_KAFKA_SSL_CERTIFICATE_LOCATION is set but MLE_KAFKA_SSL_KEY_LOCATION is not"),
    ({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "yes"},
     "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM must be https .* or none, got 'yes'"),
    (sasl_env("OAUTHBEARER"), "MLE_KAFKA_SASL_MECHANISM=OAUTHBEARER is not supported: .*aiokafka"),
    (sasl_env("GSSAPI"), "MLE_KAFKA_SASL_MECHANISM=GSSAPI is not supported"),
    (sasl_env("SCRAM-SHA-1"), "MLE_KAFKA_SASL_MECHANISM must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"MLE_KAFKA_SSL_CA_LOCACTION": "/etc/ssl/ca.pem"}, "unknown variable MLE_KAFKA_SSL_CA_LOCACTION"),
    ({"MLE_KAFKA_PROPERTIES_FILE": "/no/such/client.properties"},
     "MLE_KAFKA_PROPERTIES_FILE=/no/such/client.properties"),
])
def test_wrong_settings_fail_at_start_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_properties_file_errors_name_the_line_and_never_echo_it(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(f"security.protocol=SASL_SSL\nsasl.password {SASL_PASSWORD}\n")
    with pytest.raises(ConfigError, match=rf"{props}:2: expected key=value") as missing_equals:
        KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props)})
    assert SASL_PASSWORD not in str(missing_equals.value)
    props.write_text('security.protocol=SASL_SSL\n\nsasl.jaas.config=org.apache...ScramLoginModule required;\n')
    with pytest.raises(ConfigError, match=rf"{props}:3: sasl.jaas.config is not supported here: put the user name"):
        KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props)})
    props.write_text("bootstrap.servers=kafka:9093\n")
    with pytest.raises(ConfigError, match="set MLE_BOOTSTRAP_SERVERS"):
        KafkaSecurity.from_env({"MLE_KAFKA_PROPERTIES_FILE": str(props)})


def test_passwords_appear_in_no_repr_summary_or_error(pki: Pki) -> None:
    settings = Settings.from_env({**mtls_env(pki), "MLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                  "MLE_KAFKA_SASL_MECHANISM": "PLAIN", "MLE_KAFKA_SASL_USERNAME": "alice",
                                  "MLE_KAFKA_SASL_PASSWORD": SASL_PASSWORD})
    shown = [repr(settings), str(settings), settings.kafka_security.describe(),
             repr(faust_credentials(settings.kafka_security))]
    assert all(SASL_PASSWORD not in text and KEY_PASSWORD not in text for text in shown), shown
    assert "alice" in settings.kafka_security.describe()

    wrong = KafkaSecurity.from_env({**mtls_env(pki), "MLE_KAFKA_SSL_KEY_PASSWORD": "not-" + KEY_PASSWORD})
    with pytest.raises(ConfigError, match="MLE_KAFKA_SSL_KEY_PASSWORD") as bad_password:
        wrong.ssl_context()
    assert KEY_PASSWORD not in str(bad_password.value)


def test_the_embedded_broker_is_refused_when_security_is_configured(pki: Pki) -> None:
    settings = Settings.from_env({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CA_LOCATION": str(pki.ca)})
    with pytest.raises(ConfigError,
                       match="Kafka security is configured .* but the embedded broker only speaks PLAINTEXT"):
        with bootstrap_servers(settings, embedded=True):
            pass


SASL_CASES = [(protocol, mechanism) for protocol in ("SASL_SSL", "SASL_PLAINTEXT")
              for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")]


@pytest.mark.parametrize("protocol, mechanism", SASL_CASES)
def test_librdkafka_accepts_each_sasl_configuration(protocol: str, mechanism: str) -> None:
    security = KafkaSecurity.from_env(sasl_env(mechanism, protocol))
    quiet = {"log_level": 0}  # nothing listens on port 1: the connection errors are not the point
    Producer(producer_config("127.0.0.1:1", security=security, **quiet))
    Consumer(consumer_config("127.0.0.1:1", "g", security=security, **quiet)).close()
    admin_client("127.0.0.1:1", security=security, **quiet)
    # The control: librdkafka reads these properties at construction (it refuses a mechanism without
    # its password, and would refuse any property name it does not know).
    config = producer_config("127.0.0.1:1", security=security, **quiet)
    del config["sasl.password"]
    with pytest.raises(KafkaException, match="sasl.username and sasl.password must be set"):
        Producer(config)


def test_librdkafka_loads_the_client_key_with_its_password(pki: Pki) -> None:
    Producer(producer_config("127.0.0.1:1", security=KafkaSecurity.from_env(mtls_env(pki))))
    wrong = KafkaSecurity.from_env({**mtls_env(pki), "MLE_KAFKA_SSL_KEY_PASSWORD": "not-" + KEY_PASSWORD})
    with pytest.raises(KafkaException, match="ssl.key"):
        Producer(producer_config("127.0.0.1:1", security=wrong))


@pytest.mark.parametrize("protocol, mechanism", SASL_CASES)
def test_aiokafka_accepts_each_sasl_configuration_through_faust(protocol: str, mechanism: str) -> None:
    security = KafkaSecurity.from_env(sasl_env(mechanism, protocol))
    auth = credentials_to_aiokafka_auth(faust_credentials(security))
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"],
            auth["sasl_plain_password"]) == (protocol, mechanism, "alice", SASL_PASSWORD)
    assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")

    async def build(**settings: object) -> None:
        await AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **settings).client.close()

    asyncio.run(build(**auth))
    with pytest.raises(ValueError, match="sasl_mechanism"):  # the control: aiokafka checks them
        asyncio.run(build(**{**auth, "sasl_mechanism": "SCRAM-SHA-1"}))


def test_the_tls_context_follows_the_settings(pki: Pki) -> None:
    mtls = KafkaSecurity.from_env(mtls_env(pki))
    context = mtls.ssl_context()
    assert context is not None and context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    relaxed = KafkaSecurity.from_env({**mtls_env(pki), "MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"})
    relaxed_context = relaxed.ssl_context()
    assert relaxed_context is not None and not relaxed_context.check_hostname
    assert relaxed_context.verify_mode.name == "CERT_REQUIRED"  # the chain is still verified
    auth = credentials_to_aiokafka_auth(faust_credentials(mtls))
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"] is not None


def test_every_kafka_client_config_comes_from_mle_stream_kafka() -> None:
    """A client config written by hand elsewhere would miss the security settings: only kafka.py
    may spell out bootstrap.servers (kafka_security.py names it in an error hint)."""
    package = Path(__file__).resolve().parent.parent / "mle_stream"
    elsewhere = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if path.name not in ("kafka.py", "kafka_security.py") and '"bootstrap.servers"' in path.read_text()]
    assert elsewhere == []

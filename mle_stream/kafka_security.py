"""TLS and SASL for every Kafka connection: read once, from the environment or a properties file,
in librdkafka's property names (mle_stream.stream.credentials translates them for the Faust
worker's aiokafka clients, so this module, which the client imports, needs no Faust).

Sources, the later overriding the earlier key by key:

1. `MLE_KAFKA_PROPERTIES_FILE`: a Java-style properties file (`key=value` lines, `#` or `!`
   comments), as Kafka's own `client.properties`, holding any of PROPERTIES;
2. one variable per property: `MLE_KAFKA_` + the property upper-cased with dots as underscores
   (`ssl.ca.location` -> `MLE_KAFKA_SSL_CA_LOCATION`).

Anything else under `MLE_KAFKA_`, any other key in the file, and settings that contradict each
other (SASL_SSL without a mechanism, a CA file that does not exist, TLS files with PLAINTEXT) are a
ConfigError at start that names the variable or file:line. Passwords appear in no repr and no error.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mle_stream.errors import ConfigError

ENV_PREFIX = "MLE_KAFKA_"
PROPERTIES_FILE_VARIABLE = "MLE_KAFKA_PROPERTIES_FILE"

PROPERTIES = (
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
)
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Mechanisms both clients know but this configuration cannot drive alike, with the reason.
UNSUPPORTED_MECHANISMS = {
    "OAUTHBEARER": "librdkafka fetches OIDC tokens itself (sasl.oauthbearer.method=oidc), but aiokafka, "
                   "under the Faust worker, only calls a token-provider object written in Python; one set of "
                   "properties cannot configure both",
    "GSSAPI": "Kerberos needs a keytab and system libraries on every host, and aiokafka needs the gssapi package",
}

# Keys of a Java client's client.properties that librdkafka has no equivalent for, with what to use.
JAVA_ONLY = {
    "sasl.jaas.config": "put the user name and password in sasl.username and sasl.password",
    "ssl.truststore.location": "export the CA certificate to PEM and set ssl.ca.location",
    "ssl.truststore.password": "export the CA certificate to PEM and set ssl.ca.location",
    "ssl.truststore.type": "export the CA certificate to PEM and set ssl.ca.location",
    "ssl.keystore.location": "export the client certificate and key to PEM and set ssl.certificate.location "
                             "and ssl.key.location",
    "ssl.keystore.password": "export the client certificate and key to PEM; the key's password is ssl.key.password",
    "ssl.keystore.type": "export the client certificate and key to PEM and set ssl.certificate.location "
                         "and ssl.key.location",
    "bootstrap.servers": "set MLE_BOOTSTRAP_SERVERS (the brokers are not a security setting)",
}


def env_variable(prop: str) -> str:
    """The environment variable of a librdkafka property: ssl.ca.location -> MLE_KAFKA_SSL_CA_LOCATION."""
    return ENV_PREFIX + prop.upper().replace(".", "_")


_PROPERTY_OF_VARIABLE = {env_variable(p): p for p in PROPERTIES}


@dataclass(frozen=True)
class KafkaSecurity:
    """How mle-stream's clients authenticate to Kafka and encrypt the connection.

    The fields are librdkafka's properties (PROPERTIES), validated: `protocol` is one of PROTOCOLS,
    `sasl_mechanism` one of MECHANISMS (only with a SASL protocol), the files exist, TLS settings
    only with a TLS protocol. `verify_hostname` is ssl.endpoint.identification.algorithm=https
    (librdkafka's default) against =none; the certificate chain is verified either way.
    `sources` says where each property was read (a variable or file:line) for error messages.
    """

    protocol: str = "PLAINTEXT"
    ca_location: str = ""
    certificate_location: str = ""
    key_location: str = ""
    key_password: str = field(default="", repr=False)
    verify_hostname: bool = True
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self)

    # -------------------------------------------------------------------------------------------
    # Reading

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        """The properties file named by MLE_KAFKA_PROPERTIES_FILE (if any), overridden by the
        MLE_KAFKA_<PROPERTY> variables; PLAINTEXT when none is set. `env` is the environment as
        mle_stream.config reads it (Settings.from_env, kafka_security_from_env)."""
        values: dict[str, str] = {}
        sources: dict[str, str] = {}
        path = env.get(PROPERTIES_FILE_VARIABLE, "").strip()
        if path:
            for prop, (value, where) in read_properties_file(path).items():
                values[prop], sources[prop] = value, where
        for name, value in env.items():
            if not name.startswith(ENV_PREFIX) or name == PROPERTIES_FILE_VARIABLE:
                continue
            named = _PROPERTY_OF_VARIABLE.get(name)
            if named is None:
                raise ConfigError(f"unknown variable {name}: the Kafka security variables are "
                                  f"{', '.join(sorted(_PROPERTY_OF_VARIABLE))} and {PROPERTIES_FILE_VARIABLE}")
            if value.strip():
                values[named], sources[named] = value.strip(), name
        return cls.from_properties(values, sources)

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], sources: Mapping[str, str] | None = None) -> KafkaSecurity:
        """From librdkafka properties (PROPERTIES only); `sources` names where each was read."""
        sources = dict(sources or {})
        for prop in properties:
            if prop not in PROPERTIES:
                raise ConfigError(f"{sources.get(prop, prop)}: {_unknown_property(prop)}")
        get = properties.get
        algorithm = get("ssl.endpoint.identification.algorithm", "https").strip().lower()
        if algorithm not in ("https", "none"):
            raise ConfigError(f"{_where(sources, 'ssl.endpoint.identification.algorithm')} must be https (verify "
                              f"the broker's host name, the default) or none, got {algorithm!r}")
        return cls(
            protocol=get("security.protocol", "PLAINTEXT").strip().upper(),
            ca_location=get("ssl.ca.location", "").strip(),
            certificate_location=get("ssl.certificate.location", "").strip(),
            key_location=get("ssl.key.location", "").strip(),
            key_password=get("ssl.key.password", ""),
            verify_hostname=algorithm == "https",
            sasl_mechanism=get("sasl.mechanism", "").strip().upper(),
            sasl_username=get("sasl.username", "").strip(),
            sasl_password=get("sasl.password", ""),
            sources=sources,
        )

    # -------------------------------------------------------------------------------------------
    # What it means

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """A one-line summary for logs, without secrets: 'SASL_SSL, SCRAM-SHA-512 as alice'."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.certificate_location:
            parts.append(f"client certificate {self.certificate_location}")
        if self.uses_tls and not self.verify_hostname:
            parts.append("host names not verified")
        return ", ".join(parts)

    # -------------------------------------------------------------------------------------------
    # Translations

    def librdkafka_config(self) -> dict[str, str]:
        """The properties to merge into a confluent-kafka Producer, Consumer or AdminClient config;
        empty for PLAINTEXT, so a plaintext client's config is what it was before security existed."""
        if self.protocol == "PLAINTEXT":
            return {}
        config = {"security.protocol": self.protocol}
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = "https" if self.verify_hostname else "none"
            for prop, value in (("ssl.ca.location", self.ca_location),
                                ("ssl.certificate.location", self.certificate_location),
                                ("ssl.key.location", self.key_location),
                                ("ssl.key.password", self.key_password)):
                if value:
                    config[prop] = value
        if self.uses_sasl:
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                           "sasl.password": self.sasl_password})
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client-side TLS context aiokafka needs (None without TLS): the CA (the system's when
        none is set), the client certificate for mutual TLS, host name checks as configured."""
        if not self.uses_tls:
            return None
        ca = Path(self.ca_location) if self.ca_location else None
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca and ca.is_file() else None,
                                                 capath=str(ca) if ca and ca.is_dir() else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{_where(self.sources, 'ssl.ca.location')}: cannot load the CA certificates "
                              f"from {self.ca_location}: {exc}") from exc
        context.check_hostname = self.verify_hostname
        if self.certificate_location:
            try:
                context.load_cert_chain(self.certificate_location, self.key_location,
                                        password=self.key_password or None)
            except (ssl.SSLError, OSError) as exc:
                # Not the password: ssl's message never holds it, and neither does this one.
                raise ConfigError(
                    f"cannot load the client certificate {self.certificate_location} with the key {self.key_location} "
                    f"({_where(self.sources, 'ssl.certificate.location')}, {_where(self.sources, 'ssl.key.location')}"
                    f"{', ' + _where(self.sources, 'ssl.key.password') if self.key_password else ''}): {exc}; "
                    "check that the key matches the certificate and that its password is right") from exc
        return context


def read_properties_file(path: str) -> dict[str, tuple[str, str]]:
    """The `key=value` lines of a Java-style properties file, each with its file:line. Blank lines
    and `#` / `!` comments are skipped; a key given twice keeps its last value, as Java does."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{PROPERTIES_FILE_VARIABLE}={path}: cannot read the Kafka properties file: {exc}") from exc
    found: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        where = f"{path}:{number}"
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            # The line is not echoed: it may be a password with its '=' missing.
            raise ConfigError(f"{where}: expected key=value (e.g. security.protocol=SSL)")
        key = key.strip()
        if key not in PROPERTIES:
            raise ConfigError(f"{where}: {_unknown_property(key)}")
        found[key] = (value.strip(), where)
    return found


def _unknown_property(prop: str) -> str:
    hint = JAVA_ONLY.get(prop)
    if hint:
        return f"{prop} is not supported here: {hint}"
    return f"unknown Kafka security property {prop!r}; the supported ones are {', '.join(PROPERTIES)}"


def _where(sources: Mapping[str, str], prop: str) -> str:
    """Where a property was set, for an error message: the variable, file:line, or the variable to set."""
    return sources.get(prop) or env_variable(prop)


def _check(security: KafkaSecurity) -> None:
    """The settings agree with each other and the files exist; raise ConfigError naming what to fix."""
    s, where = security, (lambda prop: _where(security.sources, prop))
    if s.protocol not in PROTOCOLS:
        raise ConfigError(f"{where('security.protocol')} must be one of {', '.join(PROTOCOLS)}, got {s.protocol!r}")
    if s.uses_sasl:
        if not s.sasl_mechanism:
            raise ConfigError(f"security.protocol={s.protocol} needs a SASL mechanism: set {where('sasl.mechanism')} "
                              f"to one of {', '.join(MECHANISMS)}")
        if s.sasl_mechanism in UNSUPPORTED_MECHANISMS:
            raise ConfigError(f"{where('sasl.mechanism')}={s.sasl_mechanism} is not supported: "
                              f"{UNSUPPORTED_MECHANISMS[s.sasl_mechanism]}. Use one of {', '.join(MECHANISMS)}")
        if s.sasl_mechanism not in MECHANISMS:
            raise ConfigError(f"{where('sasl.mechanism')} must be one of {', '.join(MECHANISMS)}, "
                              f"got {s.sasl_mechanism!r}")
        missing = [where(p) for p, v in (("sasl.username", s.sasl_username), ("sasl.password", s.sasl_password))
                   if not v]
        if missing:
            raise ConfigError(f"sasl.mechanism={s.sasl_mechanism} needs a user name and a password: set "
                              f"{' and '.join(missing)}")
    else:
        stray = [where(p) for p, v in (("sasl.mechanism", s.sasl_mechanism), ("sasl.username", s.sasl_username),
                                       ("sasl.password", s.sasl_password)) if v]
        if stray:
            raise ConfigError(f"{', '.join(stray)} set, but security.protocol is {s.protocol} "
                              f"({where('security.protocol')}): "
                              "SASL would not be used. Set it to SASL_SSL (or SASL_PLAINTEXT), or remove them")
    files = (("ssl.ca.location", s.ca_location), ("ssl.certificate.location", s.certificate_location),
             ("ssl.key.location", s.key_location))
    if not s.uses_tls:
        stray = [where(p) for p, v in (*files, ("ssl.key.password", s.key_password)) if v]
        if not s.verify_hostname:
            stray.append(where("ssl.endpoint.identification.algorithm"))
        if stray:
            raise ConfigError(f"{', '.join(stray)} set, but security.protocol is {s.protocol} "
                              f"({where('security.protocol')}): "
                              "TLS would not be used. Set it to SSL (or SASL_SSL), or remove them")
        return
    for prop, path in files:
        if path and not os.access(path, os.R_OK):
            problem = "does not exist" if not os.path.exists(path) else "is not readable by this process"
            raise ConfigError(f"{where(prop)}: {path} {problem}")
    if bool(s.certificate_location) != bool(s.key_location):
        given, needed = (("ssl.certificate.location", "ssl.key.location") if s.certificate_location
                         else ("ssl.key.location", "ssl.certificate.location"))
        raise ConfigError(f"{where(given)} is set but {where(needed)} is not: mutual TLS needs both the client "
                          "certificate and its private key")
    if s.key_password and not s.key_location:
        raise ConfigError(f"{where('ssl.key.password')} is set but there is no key: set {where('ssl.key.location')}")


PLAINTEXT = KafkaSecurity()  # no TLS, no SASL: what every client used before these settings existed

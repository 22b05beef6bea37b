"""TLS and SASL of the Faust worker's aiokafka clients, from the Kafka security every component reads
(mle_stream.kafka_security). Kept on the stream side so that module, which the client imports,
needs no Faust."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from mle_stream.kafka_security import KafkaSecurity


def faust_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """faust.App(broker_credentials=...): SSLCredentials for SSL, SASLCredentials for SASL_*
    (with the TLS context for SASL_SSL), None for PLAINTEXT."""
    if security.protocol == "PLAINTEXT":
        return None
    context = security.ssl_context()
    if not security.uses_sasl:
        assert context is not None
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=security.sasl_username, password=security.sasl_password,
                                 ssl_context=context, mechanism=security.sasl_mechanism)

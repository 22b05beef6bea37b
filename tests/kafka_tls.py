"""A real TLS listener for the tests: certificates made at test time, and a TLS-terminating proxy in
front of the embedded broker, which advertises the proxy's port so that every connection a client
opens after the bootstrap goes through TLS too.

Why a proxy: Tansu 0.6.0 parses --cert/--key but never uses them (its TLS acceptor is built and
dropped), and clap puts both in one exclusive group, so --cert and --key cannot even be given together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mle_stream.broker import EmbeddedBroker, free_port

KEY_PASSWORD = "client-key-pass"


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 / localhost, one for another host name,
    a client certificate whose key is encrypted with KEY_PASSWORD, and a CA nobody uses."""

    ca: Path
    server_cert: Path
    server_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("mle-stream test CA")

    def leaf(cn: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    def write(filename: str, data: bytes) -> Path:
        path = directory / filename
        path.write_bytes(data)
        return path

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                      else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    server_key, server_cert = leaf("localhost", [x509.DNSName("localhost"),
                                                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                                   ExtendedKeyUsageOID.SERVER_AUTH)
    wrong_key, wrong_cert = leaf("kafka.invalid", [x509.DNSName("kafka.invalid")], ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = leaf("mle-stream-test-client", [], ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_ca_cert = ca("a CA nobody trusts")
    return Pki(
        ca=write("ca.pem", cert_pem(ca_cert)),
        server_cert=write("server.pem", cert_pem(server_cert)), server_key=write("server.key", key_pem(server_key)),
        wrong_name_cert=write("wrong-name.pem", cert_pem(wrong_cert)),
        wrong_name_key=write("wrong-name.key", key_pem(wrong_key)),
        client_cert=write("client.pem", cert_pem(client_cert)),
        client_key=write("client.key", key_pem(client_key, KEY_PASSWORD)),
        other_ca=write("other-ca.pem", cert_pem(other_ca_cert)),
    )


class TlsProxy:
    """Accepts TLS on 127.0.0.1:`port` and forwards the plaintext to 127.0.0.1:`upstream_port`.
    With `client_ca` it requires a client certificate signed by that CA (mutual TLS).
    `sessions` counts the TLS handshakes that succeeded: traffic that really went through TLS."""

    def __init__(self, port: int, upstream_port: int, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.port, self.upstream_port = port, upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.sessions = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> "TlsProxy":
        # Refused handshakes are what some tests expect: keep asyncio from logging each one.
        self._loop.set_exception_handler(lambda loop, context: None)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    writer.close()

        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))

    def __enter__(self) -> "TlsProxy":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def tls_broker(cert: Path, key: Path, client_ca: Path | None = None) -> Iterator[tuple[str, TlsProxy]]:
    """The embedded broker behind a TlsProxy; yields (bootstrap servers, proxy). The broker's own
    plaintext port is advertised nowhere: clients only ever learn the proxy's address."""
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker, \
            TlsProxy(proxy_port, broker.port, cert, key, client_ca) as proxy:
        yield f"127.0.0.1:{proxy_port}", proxy

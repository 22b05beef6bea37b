"""A secured Kafka listener for the tests: the embedded broker behind a proxy that terminates TLS
and/or SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) on loopback, with certificates made at test time.
The broker advertises the proxy's port, so every connection a client opens after the bootstrap
goes through the proxy too.

Why a proxy: Tansu 0.6.0 parses --cert/--key but never uses them (its TLS acceptor is built and
dropped; clap even puts both in one exclusive group). Its --authentication offers SCRAM only, with
users kept in its storage and creatable only over an authenticated connection: on the in-memory
storage nobody can ever log in. The proxy's SASL side is the server half of the Kafka SASL exchange
(SaslHandshake v1, SaslAuthenticate v0-v2; RFC 5802 SCRAM), so the clients under test run their
own, unmodified SASL code against it; after a successful authentication it only forwards bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import os
import ssl
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

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
    now = datetime.datetime.now(datetime.UTC)

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
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("mle-stream test CA")

    def leaf(cn: str, sans: list[x509.GeneralName],
             usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
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


class KafkaProxy:
    """Accepts connections on 127.0.0.1:`port` and forwards them to 127.0.0.1:`upstream_port`.

    `tls`: the server side of TLS (with `verify_mode` CERT_REQUIRED for mutual TLS); None: plaintext.
    `users`: SASL user -> password; a client must authenticate with one of `mechanisms` before
    anything but ApiVersions reaches the broker. None: no SASL.
    `sessions` counts the connections accepted (after the TLS handshake, when there is TLS);
    `authenticated` the SASL logins that succeeded, `refused` those that failed."""

    def __init__(self, port: int, upstream_port: int, tls: ssl.SSLContext | None = None,
                 users: Mapping[str, str] | None = None,
                 mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")) -> None:
        self.port, self.upstream_port, self.tls = port, upstream_port, tls
        self.users, self.mechanisms = users, mechanisms
        self.sessions = self.authenticated = self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> KafkaProxy:
        # Refused handshakes are what some tests expect: keep asyncio from logging each one.
        self._loop.set_exception_handler(lambda loop, context: None)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> KafkaProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        try:
            if self.users is not None and not await self._authenticate(client_reader, client_writer,
                                                                       broker_reader, broker_writer):
                return
            await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_writer, broker_writer):
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    writer.close()

    async def _authenticate(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                            broker_reader: asyncio.StreamReader, broker_writer: asyncio.StreamWriter) -> bool:
        """The SASL exchange, answered here; True once the client is authenticated."""
        mechanism, scram = "", None
        while True:
            request = await _read_frame(client_reader)
            api_key, version, correlation_id = struct.unpack_from(">hhi", request)
            if api_key == 18:  # ApiVersions: the broker's own answer (it lists SaslHandshake / SaslAuthenticate)
                broker_writer.write(_frame(request))
                client_writer.write(_frame(await _read_frame(broker_reader)))
                continue
            body = _request_body(request, flexible=api_key == 36 and version >= 2)
            if api_key == 17 and version == 1:  # SaslHandshake: the mechanism
                mechanism = _string(body, 0)[0]
                error = 0 if mechanism in self.mechanisms else 33  # UNSUPPORTED_SASL_MECHANISM
                client_writer.write(_frame(struct.pack(">ihi", correlation_id, error, len(self.mechanisms))
                                           + b"".join(_pack_string(m) for m in self.mechanisms)))
                if error:
                    return False
                continue
            if api_key != 36 or not mechanism:  # anything else before authentication: refused
                return False
            token = _bytes(body, flexible=version >= 2)
            if mechanism == "PLAIN":
                _, user, password = token.decode().split("\0")
                reply, done, ok = b"", True, self.users.get(user) == password
            else:
                scram = scram or _ScramServer(mechanism, self.users)
                reply, done, ok = scram.step(token)
            if not ok:
                self.refused += 1
                client_writer.write(_authenticate_response(correlation_id, version, 58, "Authentication failed", b""))
                await client_writer.drain()
                return False
            client_writer.write(_authenticate_response(correlation_id, version, 0, None, reply))
            if done:
                self.authenticated += 1
                return True


class _ScramServer:
    """The server side of SCRAM (RFC 5802, with SHA-256 / SHA-512 as RFC 7677 and Kafka use them)."""

    def __init__(self, mechanism: str, users: Mapping[str, str]) -> None:
        self.hash = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
        self.users = users
        self.first: tuple[str, str, bytes, bytes] | None = None  # client-first-bare, server-first, keys

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def step(self, token: bytes) -> tuple[bytes, bool, bool]:
        """(reply, done, ok) for the client's next message."""
        text = token.decode()
        if self.first is None:
            bare = text.split(",", 2)[2]  # after the GS2 header "n,,"
            fields = dict(part.split("=", 1) for part in bare.split(","))
            password = self.users.get(fields["n"])
            if password is None:
                return b"", True, False
            salt, iterations = os.urandom(16), 4096
            salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), salt, iterations)
            client_key = self._hmac(salted, b"Client Key")
            stored_key, server_key = hashlib.new(self.hash, client_key).digest(), self._hmac(salted, b"Server Key")
            nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
            self.first = (bare, server_first, stored_key, server_key)
            return server_first.encode(), False, True
        bare, server_first, stored_key, server_key = self.first
        without_proof, _, proof = text.rpartition(",p=")
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        nonce = dict(part.split("=", 1) for part in without_proof.split(","))["r"]
        if nonce != server_first[2:].split(",")[0] or hashlib.new(self.hash, client_key).digest() != stored_key:
            return b"", True, False
        return b"v=" + base64.b64encode(self._hmac(server_key, auth_message)), True, True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            writer.close()


# -- the few Kafka protocol encodings the SASL exchange needs ---------------------------------------

async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _pack_uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes, at: int) -> tuple[str, int]:
    size = struct.unpack_from(">h", data, at)[0]
    return data[at + 2:at + 2 + max(size, 0)].decode(), at + 2 + max(size, 0)


def _pack_string(text: str) -> bytes:
    return struct.pack(">h", len(text.encode())) + text.encode()


def _request_body(request: bytes, flexible: bool) -> bytes:
    """The body after the request header (v1: key, version, correlation id, client id; v2 adds tagged fields)."""
    _, at = _string(request, 8)
    if flexible:
        count, at = _uvarint(request, at)
        assert count == 0, "tagged fields in a SASL request header"
    return request[at:]


def _bytes(body: bytes, flexible: bool) -> bytes:
    if flexible:
        size, at = _uvarint(body, 0)
        return body[at:at + size - 1]
    size = struct.unpack_from(">i", body)[0]
    return body[4:4 + size]


def _authenticate_response(correlation_id: int, version: int, error: int, message: str | None, token: bytes) -> bytes:
    if version >= 2:  # flexible: compact strings and bytes, tagged fields after the header and the body
        text = b"\x00" if message is None else _pack_uvarint(len(message.encode()) + 1) + message.encode()
        body = (struct.pack(">h",
                            error) + text + _pack_uvarint(len(token) + 1) + token + struct.pack(">q", 0) + b"\x00")
        return _frame(struct.pack(">i", correlation_id) + b"\x00" + body)
    text = struct.pack(">h", -1) if message is None else _pack_string(message)
    body = struct.pack(">h", error) + text + struct.pack(">i", len(token)) + token
    if version == 1:
        body += struct.pack(">q", 0)  # session lifetime: none
    return _frame(struct.pack(">i", correlation_id) + body)


def server_tls(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The proxy's TLS: this certificate; with `client_ca`, a client certificate it signed is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


@contextlib.contextmanager
def secured_broker(tls: ssl.SSLContext | None = None,
                   users: Mapping[str, str] | None = None) -> Iterator[tuple[str, KafkaProxy]]:
    """The embedded broker behind a KafkaProxy; yields (bootstrap servers, proxy). The broker's own
    plaintext port is advertised nowhere: clients only ever learn the proxy's address."""
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker, \
            KafkaProxy(proxy_port, broker.port, tls, users) as proxy:
        yield f"127.0.0.1:{proxy_port}", proxy

"""Self-signed TLS for a test's nats-server, made with ``cryptography`` (a dev
dependency): a CA, a server certificate for 127.0.0.1/localhost signed by it, and a
client certificate signed by it."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: Key,
    *,
    issuer: tuple[x509.Certificate, Key] | None = None,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: Key | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def make_tls(directory: Path, *, ca_name: str = "marketcast test CA") -> TlsFiles:
    """A CA and a server and a client certificate signed by it, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(ca_name, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("nats-server", server_key, issuer=(ca, ca_key), server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("marketcast-node", client_key, issuer=(ca, ca_key))
    directory.mkdir(parents=True, exist_ok=True)
    return TlsFiles(
        ca=_write(directory / "ca.pem", ca),
        server_cert=_write(directory / "server.pem", server),
        server_key=_write(directory / "server-key.pem", key=server_key),
        client_cert=_write(directory / "client.pem", client),
        client_key=_write(directory / "client-key.pem", key=client_key),
    )

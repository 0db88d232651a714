"""Keys and certificates for the identity emulator (``cryptography``, which azure-identity already depends on).

A throw-away test CA signs the server certificate (``127.0.0.1`` and ``localhost``); :func:`make_certificate`
makes the self-signed certificates app registrations authenticate with (``CertificateCredential``), written as
PEM (certificate and unencrypted key in one file, the form azure-identity reads) or PFX with a password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

__all__ = ["AppCertificate", "TestCA", "make_certificate", "new_key"]

_DAY = dt.timedelta(days=1)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class AppCertificate:
    """A self-signed certificate and its key, as an app registration's credential."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def thumbprint_sha1(self) -> str:
        """Hex SHA-1 of the DER certificate: the ``x5t`` header, base64url-encoded, of an assertion."""
        return hashlib.sha1(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()  # noqa: S324

    @property
    def thumbprint_sha256(self) -> str:
        """Hex SHA-256 of the DER certificate: the ``x5t#S256`` header of an assertion."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write_pem(self, path: str | Path) -> Path:
        """Key and certificate in one PEM file (what ``AZURE_CLIENT_CERTIFICATE_PATH`` may name)."""
        target = Path(path)
        target.write_bytes(_key_pem(self.key) + self.cert_pem)
        return target

    def write_pfx(self, path: str | Path, password: str | None = None) -> Path:
        """A PKCS#12 (``.pfx``) file, encrypted with ``password`` when given."""
        encryption = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        )
        target = Path(path)
        target.write_bytes(pkcs12.serialize_key_and_certificates(b"app", self.key, self.certificate, None, encryption))
        return target


def make_certificate(common_name: str = "defguard-entra-test-app", *, days: int = 30) -> AppCertificate:
    """A new self-signed RSA certificate for an app registration."""
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .sign(key, hashes.SHA256())
    )
    return AppCertificate(cert, key)


class TestCA:
    """A certificate authority for one emulator run, and the server certificate it signs for loopback."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.key = new_key()
        now = dt.datetime.now(dt.UTC)
        name = _name("defguard-entra identity emulator test CA")
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """A server-side TLS context whose certificate (``127.0.0.1``, ``::1``, ``localhost``) this CA signed."""
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = directory / "server.pem"
        chain.write_bytes(_key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
        chain.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(chain)
        return context


def temporary_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="defguard-entra-idp-")

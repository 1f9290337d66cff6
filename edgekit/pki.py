"""The fleet's own small certificate authority: who may talk to the broker, and as whom.

One CA per workspace (``.edgekit/pki/ca.pem`` and its key, mode 0600) signs the broker's
server certificate and one client certificate per device and per host role. The broker
(``edgekit broker config``) takes the certificate's common name as the client's username
(mosquitto's ``use_identity_as_username``), so a device's identity is the key it holds, not
a client id anyone can type.

Keys are ECDSA P-256: every TLS stack a device may have (OpenSSL, mbedTLS, wolfSSL) speaks
it, where Ed25519 certificates are still patchy in TLS. Bundles and telemetry keep Ed25519
(:mod:`edgekit.keys`, :mod:`edgekit.identity`); these keys serve TLS only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import EdgekitError

CA_DAYS = 3650  # the CA outlives its devices; rotate it by enrolling again under a new one
LEAF_DAYS = 825  # the longest lifetime common TLS stacks accept for a certificate
BACKDATE = dt.timedelta(minutes=5)  # a device whose clock is a little behind still accepts a new certificate


class PkiError(EdgekitError):
    kind = "pki"


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded, with the serial the CA gave it."""

    cert_pem: bytes
    key_pem: bytes
    serial: int
    not_after: dt.datetime

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(self.cert_pem)
        write_secret(key_path, self.key_pem)


def write_secret(path: Path, data: bytes) -> None:
    """A private file: created 0600 before a byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class FleetCA:
    """The CA's certificate and key; :meth:`issue` signs client and server certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, name: str = "edgekit fleet CA", days: int = CA_DAYS) -> FleetCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, folder: Path) -> FleetCA:
        try:
            cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        except FileNotFoundError:
            raise PkiError(f"no fleet CA in {folder}", "run 'edgekit devices add' or 'edgekit broker config'") from None
        except ValueError as exc:
            raise PkiError(f"the fleet CA in {folder} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"the fleet CA key in {folder} is not an EC key")
        return cls(cert, key)

    @classmethod
    def ensure(cls, folder: Path, name: str = "edgekit fleet CA") -> FleetCA:
        """The CA in ``folder``, made on first use."""
        if (folder / "ca.pem").exists():
            return cls.load(folder)
        ca = cls.create(name)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        write_secret(folder / "ca.key", _key_pem(ca.key))
        (folder / "ca.pem").write_bytes(ca.cert_pem)
        return ca

    def issue(
        self, common_name: str, *, server: bool = False, hosts: tuple[str, ...] = (), days: int = LEAF_DAYS
    ) -> Issued:
        """A fresh key and a certificate for ``common_name``: a client's (its broker identity)
        or, with ``server``, the broker's, valid for ``hosts`` (names or IP addresses)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            names: list[x509.GeneralName] = []
            for host in hosts or ("localhost", "127.0.0.1"):
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial, not_after)


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

"""Building keys and X.509 certificates for the bridge's private CA.

All keys are EC P-256 and all signatures ECDSA with SHA-256. Leaf certificates carry
basicConstraints CA:FALSE, digitalSignature key usage and exactly one extended key usage
(serverAuth or clientAuth), so a client certificate cannot serve as a server's and back.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securellmctl.certs._files import read_file
from securellmctl.certs.errors import CertError

CA_DAYS = 3650
#: Certificates start slightly in the past so that small clock skew between hosts is harmless.
BACKDATE = timedelta(minutes=5)
DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Authority:
    """A loaded CA: its certificate and signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def is_safe_name(name: str) -> bool:
    """True for 1-64 letters, digits, ``.``, ``_``, ``-`` starting with a letter or digit."""
    return _NAME_RE.fullmatch(name) is not None


def validate_name(name: str, what: str) -> str:
    """Return ``name`` if it is a safe file name / common name, else raise."""
    if not is_safe_name(name):
        raise CertError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_days(days: int) -> int:
    if days < 1:
        raise CertError(f"validity must be at least 1 day, got {days}")
    return days


def parse_san(entry: str) -> x509.GeneralName:
    """An IP literal becomes an IP SAN, anything else must be a DNS name (``*.`` allowed)."""
    text = entry.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.removeprefix("*.").rstrip(".").split(".")
    if len(text) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise CertError(f"invalid subject alternative name {entry!r}: not an IP address or DNS name")
    return x509.DNSName(text.rstrip(".").lower())


def server_sans(extra: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in (*DEFAULT_SANS, *extra):
        name = parse_san(entry)
        if name not in names:
            names.append(name)
    return names


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build_ca(common_name: str, key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_cn(common_name))
        .issuer_name(_cn(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_leaf(
    ca: Authority,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
    sans: Sequence[x509.GeneralName],
    days: int,
    now: datetime,
) -> x509.Certificate:
    """A server (``server=True``) or client certificate signed by ``ca``."""
    not_after = now + timedelta(days=validate_days(days))
    if not_after > ca.cert.not_valid_after_utc:
        raise CertError(
            f"a {days}-day certificate would outlive the CA, which expires on "
            f"{ca.cert.not_valid_after_utc:%Y-%m-%d}; choose fewer days or a new CA"
        )
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def load_authority(directory: Path) -> Authority:
    """Load ``ca.crt``/``ca.key`` from ``directory`` and check that they belong together."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if not cert_path.exists() or not key_path.exists():
        raise CertError(f"{directory} holds no CA (ca.crt and ca.key); initialise it first")
    try:
        cert = x509.load_pem_x509_certificate(read_file(cert_path, "CA certificate"))
    except ValueError:
        raise CertError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(read_file(key_path, "CA key"), password=None)
    except (ValueError, TypeError):
        raise CertError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC key")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} does not belong to {cert_path}")
    return Authority(cert=cert, key=key)


def utc_now() -> datetime:
    return datetime.now(UTC)

"""Reading certificates and revocation lists back: what they say, and whether keys are weak."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from securellmctl.certs._build import utc_now
from securellmctl.certs._files import read_file
from securellmctl.certs.errors import CertError

_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


@dataclass(frozen=True)
class CertInfo:
    """One certificate. ``serial`` is lowercase hex; datetimes are aware UTC."""

    path: Path
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    #: Whole days until ``not_after`` (negative once expired).
    days_left: int
    #: ``DNS:name``, ``IP:addr``, ``URI:...``, ``email:...``.
    sans: tuple[str, ...]
    #: ``EC P-256``, ``RSA 2048``, ``Ed25519``, ...
    key_type: str
    key_bits: int
    is_ca: bool
    #: Extended key usages, e.g. ``("serverAuth",)``; dotted OIDs for unnamed ones.
    extended_key_usage: tuple[str, ...]
    #: Upper-case, colon-separated, as ``openssl x509 -fingerprint -sha256`` prints it.
    fingerprint_sha256: str


@dataclass(frozen=True)
class CrlInfo:
    """One certificate revocation list; serials are lowercase hex like :attr:`CertInfo.serial`."""

    path: Path
    issuer: str
    last_update: datetime
    next_update: datetime | None
    crl_number: int | None
    revoked_serials: tuple[str, ...]


def inspect(path: Path, *, now: datetime | None = None) -> list[CertInfo | CrlInfo]:
    """Describe every certificate and CRL in the PEM file ``path``, in file order.

    Other PEM blocks (private keys, parameters) are skipped without being parsed.
    """
    file = Path(path)
    moment = now or utc_now()
    found: list[CertInfo | CrlInfo] = []
    for match in _PEM_BLOCK_RE.finditer(read_file(file, "PEM file")):
        label, block = match.group(1), match.group(0)
        if label == b"CERTIFICATE":
            try:
                cert = x509.load_pem_x509_certificate(block)
            except ValueError:
                raise CertError(f"{file} holds a malformed certificate") from None
            found.append(cert_info(file, cert, moment))
        elif label == b"X509 CRL":
            try:
                crl = x509.load_pem_x509_crl(block)
            except ValueError:
                raise CertError(f"{file} holds a malformed revocation list") from None
            found.append(_crl_info(file, crl))
    if not found:
        raise CertError(f"{file} holds no PEM certificate or revocation list")
    return found


def list_dir(dir: Path, *, now: datetime | None = None) -> list[CertInfo]:
    """Every certificate in the ``*.crt`` and ``*.pem`` files of ``dir``, sorted by file name.

    Files without a certificate (a ``key.pem``, say) are skipped.
    """
    directory = Path(dir)
    if not directory.is_dir():
        raise CertError(f"{directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".crt", ".pem") and p.is_file())
    infos: list[CertInfo] = []
    for file in files:
        if b"-----BEGIN CERTIFICATE-----" in read_file(file, "certificate"):
            infos.extend(i for i in inspect(file, now=now) if isinstance(i, CertInfo))
    return infos


def weak_key_reason(info: CertInfo) -> str | None:
    """Why the certificate's key is too weak, or None if it is strong enough."""
    if info.key_type.startswith(("RSA", "DSA")) and info.key_bits < MIN_RSA_BITS:
        return f"{info.key_type} key is shorter than {MIN_RSA_BITS} bits"
    if info.key_type.startswith("EC ") and info.key_bits < MIN_EC_BITS:
        return f"{info.key_type} key is shorter than {MIN_EC_BITS} bits"
    return None


def cert_info(path: Path, cert: x509.Certificate, now: datetime) -> CertInfo:
    key_type, key_bits = _key_type(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    not_after = cert.not_valid_after_utc
    return CertInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        days_left=(not_after - now) // timedelta(days=1),
        sans=_sans(cert),
        key_type=key_type,
        key_bits=key_bits,
        is_ca=constraints is not None and constraints.ca,
        extended_key_usage=_eku(cert),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    )


def _crl_info(path: Path, crl: x509.CertificateRevocationList) -> CrlInfo:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlInfo(
        path=path,
        issuer=crl.issuer.rfc4514_string(),
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        crl_number=number,
        revoked_serials=tuple(format(r.serial_number, "x") for r in crl),
    )


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _key_type(cert: x509.Certificate) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}", key.curve.key_size
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}", key.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    return type(key).__name__, 0


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    ext = _extension(cert, x509.SubjectAlternativeName)
    if ext is None:
        return ()
    out: list[str] = []
    for name in ext:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"URI:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            out.append(f"email:{name.value}")
        else:
            out.append(f"{type(name).__name__}:{name.value}")
    return tuple(out)


def _eku(cert: x509.Certificate) -> tuple[str, ...]:
    ext = _extension(cert, x509.ExtendedKeyUsage)
    if ext is None:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in ext)

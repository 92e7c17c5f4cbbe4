"""Arbitrary X.509 material for tests: CAs, leaves and CRLs with chosen validity and issuer.

Import it from tests as ``from . import certutil``. Typical use::

    ca = certutil.make_ca()
    server = certutil.make_cert(ca, "localhost", server=True, sans=("localhost", "127.0.0.1"))
    client = certutil.make_cert(ca, "alice", client=True)
    expired = certutil.make_cert(ca, "old", client=True, not_after=certutil.days_from_now(-1))
    cert_file, key_file = client.write(tmp_path, "alice")
    crl_file = certutil.write_crl(tmp_path / "ca.crl", ca, [client])

Everything is in memory until ``write``; keys are unencrypted PKCS#8 PEM written 0600.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from securellm_bridge.security.tls import peer_subject

IO_TIMEOUT = 10.0

KeyKind = Literal["ec256", "ec384", "ec192", "rsa1024", "rsa2048", "rsa3072", "ed25519"]

def days_from_now(days: float) -> datetime:
    """An aware UTC datetime ``days`` from now (negative for the past)."""
    return datetime.now(UTC) + timedelta(days=days)


def make_key(kind: KeyKind = "ec256") -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key; ``ec192`` and ``rsa1024`` are deliberately weak."""
    if kind.startswith("ec"):
        curves: dict[str, ec.EllipticCurve] = {
            "ec256": ec.SECP256R1(), "ec384": ec.SECP384R1(), "ec192": ec.SECP192R1(),
        }
        return ec.generate_private_key(curves[kind])
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")

    def write(self, directory: Path, name: str, *, chain: Sequence[Issued] = ()) -> tuple[Path, Path]:
        """Write ``NAME.crt`` (followed by ``chain``'s certificates) and ``NAME.key`` (0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem + b"".join(c.cert_pem for c in chain))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key_pem)
        return cert_path, key_path


def _name(common_name: str, extra: Sequence[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    attrs = [x509.NameAttribute(oid, value) for oid, value in extra]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _general_name(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def make_cert(
    issuer: Issued | None,
    common_name: str,
    *,
    key: CertificateIssuerPrivateKeyTypes | KeyKind = "ec256",
    server: bool = False,
    client: bool = False,
    is_ca: bool = False,
    sans: Sequence[str] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    serial: int | None = None,
    subject_extra: Sequence[tuple[x509.ObjectIdentifier, str]] = (),
) -> Issued:
    """A certificate for ``common_name`` signed by ``issuer`` (self-signed when None).

    ``server``/``client`` add the serverAuth/clientAuth extended key usage; ``sans``
    entries that are IP literals become IP SANs, the rest DNS SANs. Validity defaults to
    one hour ago until 30 days from now; pass any datetimes, e.g. in the past to expire it.
    ``subject_extra`` adds attributes before the CN (e.g. ``[(NameOID.ORGANIZATION_NAME, "X")]``).
    """
    private = make_key(key) if isinstance(key, str) else key
    subject = _name(common_name, subject_extra)
    signer = private if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(private.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or days_from_now(-1 / 24))
        .not_valid_after(not_after or days_from_now(30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                              (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False
        )
    return Issued(cert=builder.sign(signer, _hash_for(signer)), key=private)


def make_ca(
    common_name: str = "Test CA",
    *,
    issuer: Issued | None = None,
    key: CertificateIssuerPrivateKeyTypes | KeyKind = "ec256",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A CA certificate: self-signed by default, an intermediate when ``issuer`` is given."""
    return make_cert(issuer, common_name, key=key, is_ca=True, not_before=not_before,
                     not_after=not_after or days_from_now(365))


def make_crl(
    issuer: Issued,
    revoked: Iterable[Issued | int] = (),
    *,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer`` revoking the given certificates or serial numbers."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(last_update or days_from_now(-1 / 24))
        .next_update(next_update or days_from_now(7))
    )
    for item in revoked:
        serial = item if isinstance(item, int) else item.cert.serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(days_from_now(-1 / 24))
            .build()
        )
    return builder.sign(issuer.key, _hash_for(issuer.key))


def write_crl(path: Path, issuer: Issued, revoked: Iterable[Issued | int] = (), **dates: datetime) -> Path:
    """Write :func:`make_crl`'s result as PEM to ``path`` and return ``path``."""
    path.write_bytes(make_crl(issuer, revoked, **dates).public_bytes(serialization.Encoding.PEM))
    return path


def write_bundle(path: Path, certs: Iterable[Issued]) -> Path:
    """Write several certificates into one PEM file (a CA bundle) and return ``path``."""
    path.write_bytes(b"".join(c.cert_pem for c in certs))
    return path


def client_context(
    trust: Issued | Path | None,
    client: tuple[Path, Path] | None = None,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context that trusts ``trust`` (a CA or a bundle file), optionally
    presenting ``client`` = (cert file, key file). ``trust=None`` skips server verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(trust, Path):
        ctx.load_verify_locations(cafile=str(trust))
    else:
        ctx.load_verify_locations(cadata=trust.cert_pem.decode())
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


@dataclass
class Outcome:
    """What :func:`handshake` saw on each side."""

    server_error: Exception | None = None
    client_error: Exception | None = None
    peer: str | None = None
    version: str | None = None
    cipher: str | None = None
    received: bytes = b""
    #: The client's session after the handshake (offer it to a later handshake to resume).
    session: ssl.SSLSession | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.received == b"ok"


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost",
              *, session: ssl.SSLSession | None = None) -> Outcome:
    """One real loopback connection: a server thread handshakes with ``server``, records the
    outcome (``peer`` via :func:`securellm_bridge.security.tls.peer_subject`) and answers
    ``ok``; the client handshakes with ``client`` and reads until EOF. TLS 1.3 servers
    reject a client certificate after the client's handshake finished, so check
    ``server_error`` (or ``ok``) rather than only ``client_error``. ``session`` is offered
    for resumption; ``resumed`` tells whether the server accepted it."""
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(IO_TIMEOUT)
                with server.wrap_socket(conn, server_side=True) as tls:
                    outcome.peer = peer_subject(tls)
                    outcome.version = tls.version()
                    cipher = tls.cipher()
                    outcome.cipher = cipher[0] if cipher else None
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                outcome.server_error = exc

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT) as raw,
                  client.wrap_socket(raw, server_hostname=server_hostname, session=session) as tls):
                while chunk := tls.recv(16):
                    outcome.received += chunk
                outcome.session = tls.session
                outcome.resumed = bool(tls.session_reused)
        except (OSError, ssl.SSLError) as exc:
            outcome.client_error = exc
        finally:
            thread.join(IO_TIMEOUT)
    return outcome

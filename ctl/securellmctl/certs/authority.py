"""The bridge's private CA: initialise a directory, issue and revoke client certificates.

Directory layout (all PEM): ``ca.crt``/``ca.key``, ``server.crt``/``server.key``,
``client.crt``/``client.key``, one ``NAME.crt``/``NAME.key`` per issued client and the
revocation list ``ca.crl``. Keys are 0600, everything else 0644, the directory 0700.

The CRL carries a nextUpdate ``crl_days`` ahead. A server that checks revocation rejects
every client once that date has passed, so re-sign it with :func:`refresh_crl` (e.g. from
a timer) well before then.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from securellmctl.certs import _build
from securellmctl.certs._files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    ensure_dir,
    read_file,
    write_file,
)
from securellmctl.certs.errors import CertError

CA_COMMON_NAME = "securellm-bridge CA"
SERVER_COMMON_NAME = "securellm-bridge server"
CRL_NAME = "ca.crl"
CRL_DAYS = 30

_SERIAL_RE = re.compile(r"(?:0x)?([0-9a-f]{1,40})")


@dataclass(frozen=True)
class CertSet:
    """The files :func:`init_dir` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def init_dir(
    dir: Path,
    *,
    sans: Sequence[str] = (),
    client_name: str = "client",
    days: int = 825,
    force: bool = False,
) -> CertSet:
    """Create a new CA with a server and a client certificate in ``dir``.

    Refuses if any of the six files exists, unless ``force``; with ``force`` the files are
    replaced and a stale ``ca.crl`` (signed by the old CA) is removed. Certificates issued
    earlier by the old CA stay on disk but no longer verify.
    """
    directory = Path(dir)
    _build.validate_name(client_name, "client name")
    _build.validate_days(days)
    san_names = _build.server_sans(sans)
    paths = CertSet(
        ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
        server_cert=directory / "server.crt", server_key=directory / "server.key",
        client_cert=directory / "client.crt", client_key=directory / "client.key",
    )
    existing = [p.name for p in vars(paths).values() if p.exists()]
    if existing and not force:
        raise CertError(
            f"{directory} already holds {', '.join(existing)}; refusing to overwrite "
            "(use force to replace the CA and every certificate)"
        )
    now = _build.utc_now()
    ca_key = _build.new_key()
    ca = _build.Authority(cert=_build.build_ca(CA_COMMON_NAME, ca_key, now), key=ca_key)
    server_key, client_key = _build.new_key(), _build.new_key()
    server = _build.build_leaf(
        ca, SERVER_COMMON_NAME, server_key, server=True, sans=san_names, days=days, now=now
    )
    client = _build.build_leaf(ca, client_name, client_key, server=False, sans=(), days=days, now=now)
    ensure_dir(directory)
    for key_path, key in ((paths.ca_key, ca_key), (paths.server_key, server_key),
                          (paths.client_key, client_key)):
        write_file(key_path, _build.key_pem(key), mode=PRIVATE_MODE, overwrite=force)
    for cert_path, cert in ((paths.ca_cert, ca.cert), (paths.server_cert, server),
                            (paths.client_cert, client)):
        write_file(cert_path, _build.cert_pem(cert), mode=PUBLIC_MODE, overwrite=force)
    if force:
        with contextlib.suppress(FileNotFoundError):
            (directory / CRL_NAME).unlink()
    return paths


def issue_client(dir: Path, name: str, *, days: int = 825) -> tuple[Path, Path]:
    """Sign a client certificate ``NAME.crt`` (CN=NAME) and key ``NAME.key`` with the CA in ``dir``."""
    directory = Path(dir)
    _build.validate_name(name, "client name")
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise CertError(f"{path} already exists; refusing to overwrite it")
    ca = _build.load_authority(directory)
    key = _build.new_key()
    cert = _build.build_leaf(ca, name, key, server=False, sans=(), days=days, now=_build.utc_now())
    write_file(key_path, _build.key_pem(key), mode=PRIVATE_MODE, overwrite=False)
    try:
        write_file(cert_path, _build.cert_pem(cert), mode=PUBLIC_MODE, overwrite=False)
    except CertError:
        key_path.unlink()
        raise
    return cert_path, key_path


def revoke_client(dir: Path, name_or_serial: str) -> Path:
    """Add a certificate to the CA's revocation list ``ca.crl`` and return its path.

    ``name_or_serial`` is the name of a ``NAME.crt`` in ``dir`` issued by this CA, or a
    hexadecimal serial number (as :func:`securellmctl.certs.inspect` prints it) for a
    certificate that is no longer on disk. Earlier revocations are kept; revoking a serial
    twice only re-signs the list.
    """
    directory = Path(dir)
    ca = _build.load_authority(directory)
    serial = _resolve_serial(directory, ca, name_or_serial)
    return _write_crl(directory, ca, extra_serial=serial)


def refresh_crl(dir: Path) -> Path:
    """Re-sign ``ca.crl`` (creating an empty one if missing) with a fresh nextUpdate."""
    directory = Path(dir)
    return _write_crl(directory, _build.load_authority(directory), extra_serial=None)


def _resolve_serial(directory: Path, ca: _build.Authority, name_or_serial: str) -> int:
    cert_path = directory / f"{name_or_serial}.crt"
    if _build.is_safe_name(name_or_serial) and cert_path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(read_file(cert_path, "certificate"))
        except ValueError:
            raise CertError(f"{cert_path} is not a PEM certificate") from None
        if _is_ca(cert):
            raise CertError(f"{cert_path} is a CA certificate; only leaf certificates can be revoked")
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CertError(f"{cert_path} was not issued by the CA in {directory}") from None
        return cert.serial_number
    match = _SERIAL_RE.fullmatch(name_or_serial.strip().lower().replace(":", ""))
    if match is None:
        raise CertError(
            f"{name_or_serial!r} is neither a certificate name in {directory} nor a hexadecimal serial"
        )
    serial = int(match.group(1), 16)
    if serial == 0:
        raise CertError("serial numbers are positive; 0 cannot be revoked")
    if serial == ca.cert.serial_number:
        raise CertError("that serial is the CA's own; only leaf certificates can be revoked")
    return serial


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _load_crl(path: Path, ca: _build.Authority) -> x509.CertificateRevocationList | None:
    if not path.exists():
        return None
    try:
        crl = x509.load_pem_x509_crl(read_file(path, "revocation list"))
    except ValueError:
        raise CertError(f"{path} is not a PEM revocation list; move it away to start a new one") from None
    if crl.issuer != ca.cert.subject or not crl.is_signature_valid(ca.key.public_key()):
        raise CertError(f"{path} was not signed by the CA in {path.parent}; move it away first")
    return crl


def _write_crl(directory: Path, ca: _build.Authority, *, extra_serial: int | None) -> Path:
    path = directory / CRL_NAME
    previous = _load_crl(path, ca)
    now = _build.utc_now()
    number = 1
    revoked: list[x509.RevokedCertificate] = []
    if previous is not None:
        revoked = list(previous)
        with contextlib.suppress(x509.ExtensionNotFound):
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    if extra_serial is not None and all(r.serial_number != extra_serial for r in revoked):
        revoked.append(
            x509.RevokedCertificateBuilder().serial_number(extra_serial).revocation_date(now).build()
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _build.BACKDATE)
        .next_update(now + timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    write_file(path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE, overwrite=True)
    return path

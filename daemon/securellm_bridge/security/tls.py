"""The server-side TLS context of the inference API, and swapping it on reload.

:func:`build_server_context` makes a hardened context: TLS 1.2 minimum (1.3 negotiated
whenever the client can), only ECDHE key exchange with AEAD ciphers for TLS 1.2, no
compression, no renegotiation, server cipher preference, no session resumption, and
client certificate verification against a private CA with optional CRL checking of the
client's certificate.

Reload (SIGHUP): asyncio and aiohttp servers take their SSLContext once, when they bind.
:class:`ContextHolder` makes a reload possible anyway: bind the server with
``holder.bound``; that context's SNI callback, which OpenSSL runs for every handshake
(whether or not the client sends SNI), moves the new connection onto ``holder.current``.
:meth:`ContextHolder.swap` installs a freshly built context, so every handshake after it
sees the new certificate, key, CA bundle and CRL. Existing connections keep the context
they were established with until they close. Sessions are never resumed, so a client that
a reload revoked or stopped trusting cannot come back on a session from before it.

Per-connection verification settings (verify mode and flags such as CRL checking) are
copied from the *bound* context when a connection is created, before the SNI callback
runs, so :meth:`ContextHolder.swap` copies them onto the bound context as well; the
certificate, key and trust store come from the swapped-in context.
"""

from __future__ import annotations

import binascii
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from securellm_bridge.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

StrPath = str | os.PathLike[str]

#: OpenSSL cipher string for TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305.
#: TLS 1.3 suites are configured separately by OpenSSL and are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class TlsConfigKeys:
    """The dotted configuration keys that errors name for each file."""

    cert_path: str = "security.tls.cert_path"
    key_path: str = "security.tls.key_path"
    client_ca_path: str = "security.tls.client_ca_path"
    crl_path: str = "security.tls.crl_path"


def build_server_context(
    cert_path: StrPath,
    key_path: StrPath,
    client_ca_path: StrPath | None,
    require_client_cert: bool,
    crl_path: StrPath | None,
    *,
    keys: TlsConfigKeys = TlsConfigKeys(),
) -> ssl.SSLContext:
    """Build the inference API's server context; file problems raise :class:`ConfigError`.

    With ``client_ca_path`` a client certificate is verified against it: required when
    ``require_client_cert``, otherwise optional (but still verified when presented).
    ``crl_path`` (a PEM CRL signed by a CA in ``client_ca_path``) turns on revocation
    checking of client certificates; it must not be past its nextUpdate, because OpenSSL
    then rejects every client.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_TICKET
    )
    # No session resumption: a resumed session skips certificate verification, so a client
    # revoked by a reload could go on reconnecting with an old session.
    ctx.num_tickets = 0
    _load_identity(ctx, os.fspath(cert_path), os.fspath(key_path), keys)
    if client_ca_path is None:
        if require_client_cert:
            raise ConfigError("", keys.client_ca_path,
                              "a client CA bundle is required when client certificates are required")
        if crl_path is not None:
            raise ConfigError(os.fspath(crl_path), keys.crl_path,
                              "a CRL needs a client CA bundle to check client certificates against")
        return ctx
    ca_file = os.fspath(client_ca_path)
    _check_pem_certs(ca_file, keys.client_ca_path, "a PEM CA bundle holding at least one certificate")
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(ca_file, keys.client_ca_path,
                          f"a PEM CA bundle OpenSSL can load ({exc.reason or exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if crl_path is not None:
        crl_file = os.fspath(crl_path)
        _check_crl(crl_file, ca_file, keys.client_ca_path, keys.crl_path)
        try:
            ctx.load_verify_locations(cafile=crl_file)
        except ssl.SSLError as exc:
            raise ConfigError(crl_file, keys.crl_path,
                              f"a PEM CRL OpenSSL can load ({exc.reason or exc})") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified client certificate's subject, RFC 4514 style (``"CN=client,O=Example"``).

    None without a TLS connection, without a client certificate, or when the certificate
    was not verified (``getpeercert()`` only reports verified certificates).
    """
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    subject = cert.get("subject") if cert else None
    if not subject:
        return None
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn))
    return ",".join(parts)


class ContextHolder:
    """Lets a bound server pick up a new SSLContext for new connections; see the module doc."""

    def __init__(self, initial: ssl.SSLContext) -> None:
        self._bound = initial
        self._current = initial
        initial.sni_callback = self._on_handshake

    @property
    def bound(self) -> ssl.SSLContext:
        """The context to give the server when binding (never changes)."""
        return self._bound

    @property
    def current(self) -> ssl.SSLContext:
        """The context new handshakes get."""
        return self._current

    def swap(self, new: ssl.SSLContext) -> None:
        """Make ``new`` the context of every later handshake; open connections are untouched."""
        self._bound.verify_mode = new.verify_mode
        self._bound.verify_flags = new.verify_flags
        self._current = new

    def _on_handshake(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                      bound: ssl.SSLContext) -> None:
        current = self._current
        if current is not bound:
            ssl_object.context = current


_SHORT_NAMES: Mapping[str, str] = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    """RFC 4514 section 2.4 escaping, as ``cryptography``'s ``rfc4514_string`` does it."""
    if not value:
        return value
    out = "".join(f"\\{c}" if c in '\\"+,;<>' else ("\\00" if c == "\0" else c) for c in value)
    if out[0] in "# ":
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _read(path: str, key: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(path, key, f"{what}, but the file does not exist") from None
    except OSError as exc:
        raise ConfigError(path, key, f"{what} readable by the daemon ({exc.strerror})") from None


#: One PEM certificate block; its base64 body is group 1.
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def _check_pem_certs(path: str, key: str, what: str) -> None:
    """The file holds at least one well-formed PEM certificate block (OpenSSL parses the DER).

    Deliberately without ``cryptography``: importing it costs the daemon ~8 MB of RSS for
    good, and only a CRL needs it (:func:`_check_crl`)."""
    data = _read(path, key, what)
    blocks = _PEM_CERT.findall(data)
    try:
        if not blocks or not all(binascii.a2b_base64(b) for b in blocks):
            raise ValueError
        # OpenSSL parses every block (a scratch trust store accepts any certificate).
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (binascii.Error, ValueError, ssl.SSLError):
        raise ConfigError(path, key, what) from None


def _load_identity(ctx: ssl.SSLContext, cert_path: str, key_path: str, keys: TlsConfigKeys) -> None:
    _check_pem_certs(cert_path, keys.cert_path, "a PEM certificate chain")
    _read(key_path, keys.key_path, "a PEM private key")

    def refuse_password() -> bytes:
        raise ConfigError(key_path, keys.key_path, "an unencrypted PEM private key")

    try:
        ctx.load_cert_chain(cert_path, key_path, password=refuse_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            key_path, keys.key_path,
            f"a PEM private key matching {cert_path} ({exc.reason or 'unreadable key'})",
        ) from None


def _signed_by(crl: "x509.CertificateRevocationList", ca: "x509.Certificate") -> bool:
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:  # a key type that cannot sign CRLs
        return False


def _check_crl(path: str, ca_file: str, ca_key: str, key: str) -> None:
    from cryptography import x509  # only sites with a CRL pay for it (see _check_pem_certs)

    try:
        cas = x509.load_pem_x509_certificates(_read(ca_file, ca_key, "a PEM CA bundle"))
    except ValueError:
        raise ConfigError(ca_file, ca_key, "a PEM CA bundle holding at least one certificate") from None
    try:
        crl = x509.load_pem_x509_crl(_read(path, key, "a PEM certificate revocation list"))
    except ValueError:
        raise ConfigError(path, key, "a PEM certificate revocation list") from None
    if not any(_signed_by(crl, ca) for ca in cas):
        raise ConfigError(path, key, "a CRL signed by a CA in the client CA bundle")
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= datetime.now(UTC):
        raise ConfigError(
            path, key,
            f"a current CRL, but it expired at {next_update:%Y-%m-%d %H:%M} UTC; re-sign it",
        )

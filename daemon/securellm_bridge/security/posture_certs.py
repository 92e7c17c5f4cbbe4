"""Posture checks of the TLS material: weak keys, certificate expiry, the client CRL.

Certificates are read with :mod:`securellmctl.certs` (the same code as ``securellmctl certs
list``), so "weak" means the same thing everywhere. A file that is missing or unreadable is
left to the file checks (:mod:`.posture_files`), which report it once.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from securellmctl.certs import CertError, CertInfo, inspect, weak_key_reason

from ..config.security import TlsConfig
from .posture_base import Context, Finding
from .tls import _signed_by

#: A certificate that expires sooner than this is reported [medium].
EXPIRY_WARNING = timedelta(days=30)
#: A CRL whose nextUpdate is sooner than this is reported [medium] (`certs refresh-crl`
#: makes one valid for 30 days).
CRL_WARNING = timedelta(days=7)
_RENEW = ("issue a new one (securellmctl certs init --force for the private CA, or your CA), "
          "then securellmctl reload")


def certificates(tls: TlsConfig, ctx: Context) -> list[Finding]:
    """Every certificate of ``cert_path`` and ``client_ca_path``, the CRL, and whether there is one."""
    if not tls.enabled:
        return []
    out: list[Finding] = []
    for key, path in (("security.tls.cert_path", tls.cert_path),
                      ("security.tls.client_ca_path", tls.client_ca_path)):
        if path is not None:
            out += _certificate_file(key, path, ctx)
    if tls.crl_path is not None:
        out += _crl(tls.crl_path, tls.client_ca_path, ctx)
    elif tls.require_client_cert:
        out.append(Finding("tls.no_crl", "low", "Client certificates cannot be revoked",
                           "security.tls.crl_path is unset: a lost or stolen client certificate stays "
                           "valid until it expires",
                           "securellmctl certs revoke NAME --dir DIR writes DIR/ca.crl; set "
                           "security.tls.crl_path to it"))
    return out


def _certificate_file(key: str, path: str, ctx: Context) -> list[Finding]:
    if not os.access(path, os.R_OK):
        return []
    try:
        infos = [i for i in inspect(Path(path), now=ctx.now) if isinstance(i, CertInfo)]
    except CertError as exc:
        return [Finding("certs.unreadable", "medium", "A certificate file cannot be parsed", f"{key}: {exc.message}",
                        "point the key at a PEM certificate file; the daemon cannot start or reload otherwise")]
    out = []
    for info in infos:
        where = f"{key}: {path}: {info.subject}"
        if reason := weak_key_reason(info):
            out.append(Finding("certs.weak_key", "high", "A certificate has a weak key", f"{where}: {reason}",
                               f"use an EC P-256 or RSA 3072 key: {_RENEW}"))
        left = info.not_after - ctx.now
        if left <= timedelta(0):
            out.append(Finding("certs.expired", "high", "A certificate has expired",
                               f"{where}: expired {info.not_after:%Y-%m-%d %H:%M} UTC", _RENEW))
        elif left < EXPIRY_WARNING:
            out.append(Finding("certs.expiring", "medium", "A certificate expires soon",
                               f"{where}: expires {info.not_after:%Y-%m-%d %H:%M} UTC, in {left.days} days",
                               _RENEW))
    return out


def _crl(path: str, ca_path: str | None, ctx: Context) -> list[Finding]:
    key = "security.tls.crl_path"
    if not os.access(path, os.R_OK):
        return []
    try:
        with open(path, "rb") as f:
            crl = x509.load_pem_x509_crl(f.read())
    except ValueError:
        return [Finding("crl.unreadable", "medium", "The CRL cannot be parsed", f"{key}: {path} holds no PEM CRL",
                        "securellmctl certs refresh-crl --dir DIR rewrites it; the daemon cannot start or reload "
                        "without it")]
    out = []
    refresh = "securellmctl certs refresh-crl --dir DIR (it is valid for 30 days), then securellmctl reload"
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= ctx.now:
        out.append(Finding("crl.expired", "high", "The CRL is past its nextUpdate",
                           f"{key}: {path} expired {next_update:%Y-%m-%d %H:%M} UTC: the daemon refuses to load it, "
                           "and OpenSSL rejects every client certificate with it", refresh))
    elif next_update is not None and next_update - ctx.now < CRL_WARNING:
        out.append(Finding("crl.expiring", "medium", "The CRL expires soon",
                           f"{key}: {path} expires {next_update:%Y-%m-%d %H:%M} UTC", refresh))
    cas = _cas(ca_path)
    if cas is not None and not any(_signed_by(crl, ca) for ca in cas):
        out.append(Finding("crl.issuer", "high", "The CRL is not signed by the client CA",
                           f"{key}: {path} (issuer {crl.issuer.rfc4514_string()}) is signed by no CA in "
                           f"security.tls.client_ca_path: the daemon refuses to load it",
                           "re-sign it with the CA that issues the client certificates (certs refresh-crl)"))
    return out


def _cas(path: str | None) -> list[x509.Certificate] | None:
    """The client CA bundle; None when it cannot be read (the other checks report that)."""
    if path is None or not os.access(path, os.R_OK):
        return None
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())
    except ValueError:
        return None


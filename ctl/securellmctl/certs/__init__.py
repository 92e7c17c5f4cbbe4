"""Certificates for the bridge: a private CA, server and client certificates, revocation.

Uses ``cryptography`` only. Every refusal or failure raises :class:`CertError` (an
:class:`~securellm_bridge.errors.InvalidRequest`) whose message names the files involved
and never contains key material.
"""

from securellmctl.certs.authority import (
    CertSet,
    init_dir,
    issue_client,
    refresh_crl,
    revoke_client,
)
from securellmctl.certs.errors import CertError
from securellmctl.certs.inspection import CertInfo, CrlInfo, inspect, list_dir, weak_key_reason

__all__ = [
    "CertError",
    "CertInfo",
    "CertSet",
    "CrlInfo",
    "init_dir",
    "inspect",
    "issue_client",
    "list_dir",
    "refresh_crl",
    "revoke_client",
    "weak_key_reason",
]

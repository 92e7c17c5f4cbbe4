"""The one error type of :mod:`securellmctl.certs`."""

from __future__ import annotations

from securellm_bridge.errors import InvalidRequest


class CertError(InvalidRequest):
    """A certificate operation was refused or failed.

    The message names files and what to do about them; it never contains key material.
    """

    code = "certificate_error"

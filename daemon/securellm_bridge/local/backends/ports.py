"""A free TCP port on a loopback address, for a backend process to listen on.

The port is free when this returns; another process can take it before the backend binds
it, so a backend that reports "address in use" is started again on a fresh port (see
``SupervisedProcess(retryable=...)``).
"""

from __future__ import annotations

import ipaddress
import socket

from securellm_bridge.errors import InvalidRequest


def require_loopback(host: str) -> str:
    """``host`` if it is a loopback IP address (127.0.0.0/8, ::1); else :class:`InvalidRequest`.

    Backends listen with no TLS, guarded by a per-process key only: never beyond this host.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRequest(f"backend host must be a loopback IP address, not {host!r}",
                             param="host") from None
    if not address.is_loopback:
        raise InvalidRequest(f"backend host must be a loopback IP address, not {host!r}",
                             param="host")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` right now (the kernel's choice of an ephemeral one)."""
    family = socket.AF_INET6 if ipaddress.ip_address(require_loopback(host)).version == 6 \
        else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def url_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host

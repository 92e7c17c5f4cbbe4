"""Value checks used in ``field(metadata={"check": ...})``: each returns what was expected, or None."""

from __future__ import annotations

import ipaddress
import os.path
from urllib.parse import urlsplit


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; raises ValueError with a readable message."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError("expected \"[IPv6]:PORT\"")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError("expected \"HOST:PORT\", e.g. \"127.0.0.1:8443\"")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected a port between 0 (any free port) and 65535, got {port!r}")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_address(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def octal_mode(value: str) -> str | None:
    try:
        mode = int(value, 8)
    except ValueError:
        return f"expected an octal file mode such as \"0660\", got {value!r}"
    if not 0 <= mode <= 0o777:
        return f"expected a file mode between 0000 and 0777, got {value!r}"
    if mode & 0o007:
        return f"expected no permissions for others (e.g. \"0660\"), got {value!r}"
    return None


def absolute_path(value: str) -> str | None:
    return None if os.path.isabs(value) else f"expected an absolute path, got {value!r}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"expected a number greater than 0, got {value!r}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"expected a number of at least 0, got {value!r}"


def non_negative_int(value: int) -> str | None:
    return None if value >= 0 else f"expected an integer of at least 0, got {value!r}"


def http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL, got {value!r}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "expected a URL without query, fragment or credentials (put keys in api_key)"
    return None


def non_empty(value: str) -> str | None:
    return None if value.strip() else "expected a non-empty string"

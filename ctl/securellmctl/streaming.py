"""Server-streaming calls: their errors as CLI errors, and human-readable sizes.

A stream has no deadline (the daemon bounds a load by ``[local] load_timeout_seconds``), so
its failures are translated here rather than by :meth:`Client.call`. UNAVAILABLE from the
daemon itself (a model that does not fit, a load that timed out) is a failure (exit 1);
only a transport failure means the daemon cannot be reached (exit 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from .errors import CtlError, Unreachable

_TRANSPORT = ("failed to connect", "Connection refused", "No such file", "Socket closed", "Connection reset",
              "Broken pipe")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def failure(err: grpc.RpcError) -> CtlError:
    code = err.code()  # type: ignore[attr-defined]
    details = err.details() or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and (not details or any(t in details for t in _TRANSPORT)):
        return Unreachable(f"the daemon is unavailable: {details or 'the connection was lost'}")
    return CtlError(f"{code.name.lower()}: {details}")


@contextmanager
def stream_errors() -> Iterator[None]:
    """Turn a stream's :class:`grpc.RpcError` into a :class:`CtlError`."""
    try:
        yield
    except grpc.RpcError as err:
        raise failure(err) from None


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if n is None:
        return "-"
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"

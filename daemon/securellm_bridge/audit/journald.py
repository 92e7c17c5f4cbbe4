"""Sending records to journald over its native protocol, with a timeout.

systemd-python's ``journal.send`` is not usable here: it returns silently when the socket is
missing, and when journald does not read its socket it blocks *holding the GIL*, which
freezes every thread of the process, the event loop included. This sender speaks the same
protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) on a socket of its own:

* one datagram per record, each field ``NAME=value\\n``, or ``NAME\\n`` + 64-bit
  little-endian length + value + ``\\n`` when the value holds a newline;
* a record too large for a datagram goes in a sealed memfd passed with ``SCM_RIGHTS``;
* ``sendto`` has a timeout (and releases the GIL while it waits); a missing socket, a stale
  one, or a journald that does not take the record in time raise :class:`JournalUnavailable`.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from typing import Mapping

from .pipe import write_all

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SEND_TIMEOUT_S = 2.0
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_TOO_BIG = (errno.EMSGSIZE, errno.ENOBUFS)


class JournalUnavailable(Exception):
    """journald is not running (no socket), not listening (stale socket) or not reading."""


def encode(fields: Mapping[str, str]) -> bytes:
    # Names hold no newline (record.py); when no value does either, each field is "NAME=value".
    text = "\n".join(map("=".join, fields.items()))
    if text.count("\n") == len(fields) - 1:
        return (text + "\n").encode("utf-8")
    parts: list[bytes] = []
    for name, value in fields.items():
        data = value.encode("utf-8")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class JournalSink:
    def __init__(self, socket_path: str = JOURNAL_SOCKET, timeout: float = SEND_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(self.timeout)
        return self._sock

    def write(self, fields: Mapping[str, str]) -> None:
        """Send one record; raises JournalUnavailable, or OSError for anything else."""
        payload = encode(fields)
        try:
            try:
                self._socket().sendto(payload, self.socket_path)
            except OSError as exc:
                if exc.errno not in _TOO_BIG:
                    raise
                self._send_memfd(payload)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise JournalUnavailable(f"no journald at {self.socket_path} ({exc.strerror})") from None
        except TimeoutError:
            raise JournalUnavailable(f"journald did not take a record within {self.timeout:g} s") from None

    def _send_memfd(self, payload: bytes) -> None:
        fd = os.memfd_create("securellm-audit", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            write_all(fd, payload)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._socket().sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The channel to the daemon's control socket, and the translation of its errors.

grpc reports "no such file", "permission denied" and "connection refused" all as
UNAVAILABLE, so the socket is checked first to give a precise message.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any, Callable, TypeVar

import grpc

from .errors import CtlError, Unreachable

DEFAULT_SOCKET = "/run/securellm/control.sock"
SOCKET_ENV = "SECURELLM_SOCKET"
T = TypeVar("T")


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _denied(path: Path, st: os.stat_result) -> Unreachable:
    return Unreachable(
        f"permission denied: you are not in group {_group_name(st.st_gid)} "
        f"({path} is owned by {_owner_name(st.st_uid)}:{_group_name(st.st_gid)}, "
        f"mode {stat.S_IMODE(st.st_mode):04o}); ask an admin to add you to that group")


def check_socket(path: str) -> None:
    """Raise :class:`Unreachable` with a precise reason when ``path`` cannot be used."""
    sock = Path(path)
    try:
        st = sock.stat()
    except FileNotFoundError:
        raise Unreachable(f"the daemon is not running: no control socket at {path} "
                          "(start it with `systemctl start securellm-bridge`, or pass --socket)") from None
    except PermissionError:
        parent = sock.parent
        while True:
            try:
                raise _denied(parent, parent.stat())
            except PermissionError:
                parent = parent.parent
    if not stat.S_ISSOCK(st.st_mode):
        raise Unreachable(f"{path} is not a socket")
    if not os.access(path, os.R_OK | os.W_OK):
        raise _denied(sock, st)


class Client:
    """Synchronous stubs over one channel; use as a context manager."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        check_socket(socket_path)
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise self._translate(err) from None

    def _translate(self, err: grpc.RpcError) -> CtlError:
        code = err.code()  # type: ignore[attr-defined]
        details = err.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            if "Permission denied" in details:
                return _denied(Path(self.socket_path), Path(self.socket_path).stat())
            if "Connection refused" in details or "No such file" in details:
                return Unreachable(f"the daemon is not running: {self.socket_path} refuses connections "
                                   "(stale socket?)")
            return Unreachable(f"the daemon is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unreachable(f"the daemon did not answer within {self.timeout:g} s")
        return CtlError(f"{code.name.lower()}: {details}")

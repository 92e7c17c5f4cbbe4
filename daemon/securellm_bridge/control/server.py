"""The gRPC server on the control Unix socket.

The socket is bound under a restrictive umask (0600), then given the configured mode and
group, so it is never reachable by others even for an instant. grpc exposes no peer
credentials on Unix sockets, so the file's mode and group are the access control.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._pb import audit_pb2, audit_pb2_grpc, keys_pb2, keys_pb2_grpc, system_pb2, system_pb2_grpc, usage_pb2, usage_pb2_grpc
from .._pb import models_pb2, models_pb2_grpc, security_pb2, security_pb2_grpc
from ..config.schema import ControlConfig
from ..errors import StateError
from .audit import AuditServicer
from .errors import ErrorInterceptor
from .events import EventsServicer
from .keys import KeysServicer
from .models import ModelsServicer
from .security import SecurityServicer
from .system import SystemServicer
from .usage import UsageServicer

if TYPE_CHECKING:
    from ..runtime import Runtime

SERVICE_NAMES = (
    system_pb2.DESCRIPTOR.services_by_name["System"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["Keys"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["Usage"].full_name,
    security_pb2.DESCRIPTOR.services_by_name["Security"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Events"].full_name,
)


class ControlServer:
    def __init__(self, cfg: ControlConfig, runtime: "Runtime") -> None:
        self.cfg = cfg
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(interceptors=[ErrorInterceptor()],
                                       options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
        system_pb2_grpc.add_SystemServicer_to_server(SystemServicer(runtime), self._server)
        keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(runtime.keys, runtime.audit), self._server)
        audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(runtime), self._server)
        usage_pb2_grpc.add_UsageServicer_to_server(UsageServicer(runtime.usage, runtime.keys), self._server)
        security_pb2_grpc.add_SecurityServicer_to_server(SecurityServicer(runtime), self._server)
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(runtime), self._server)
        models_pb2_grpc.add_EventsServicer_to_server(EventsServicer(runtime), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)

    @property
    def address(self) -> str:
        return f"unix:{self.cfg.socket}"

    async def start(self) -> None:
        path = Path(self.cfg.socket)
        gid = _group_id(self.cfg.socket_group)
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create control socket directory {path.parent}: {exc}") from None
        if path.exists() and not path.is_socket():
            raise StateError(f"control socket path {path} exists and is not a socket")
        old = os.umask(0o177)
        try:
            self._server.add_insecure_port(self.address)
            await self._server.start()
        except RuntimeError as exc:
            raise StateError(f"cannot bind control socket {path}: {exc}") from None
        finally:
            os.umask(old)
        if gid is not None and path.stat().st_gid != gid:
            # Only when needed: a hardened unit (SystemCallFilter=~@privileged) has no chown(2),
            # and its socket already gets the service's own group.
            os.chown(path, -1, gid)
        os.chmod(path, self.cfg.mode)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        try:
            Path(self.cfg.socket).unlink()
        except FileNotFoundError:
            pass


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StateError(f"control.socket_group: no group named {name!r} on this host") from None

"""``securellm.control.v1.System``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import grpc

from .. import __version__
from .. import config as config_mod
from .._pb import system_pb2, system_pb2_grpc
from ..errors import ConfigErrors, InvalidRequest
from .convert import timestamp
from .local_convert import latest_snapshot, local_models, vram_report

if TYPE_CHECKING:
    from ..runtime import Runtime


def problems(exc: ConfigErrors) -> list[system_pb2.ConfigProblem]:
    return [system_pb2.ConfigProblem(file=e.file, key=e.key, message=e.message) for e in exc.errors]


class SystemServicer(system_pb2_grpc.SystemServicer):
    def __init__(self, runtime: "Runtime") -> None:
        self._rt = runtime

    async def GetStatus(self, request: system_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> system_pb2.Status:
        rt = self._rt
        return system_pb2.Status(
            version=__version__, pid=os.getpid(), uptime_seconds=time.monotonic() - rt.started_monotonic,
            config_path=rt.loaded.path, state=rt.state,
            listeners=[system_pb2.Listener(name=n, address=a, protocol=p) for n, a, p in rt.listeners],
            counts=rt.counts(), started_at=timestamp(rt.started_at),
            config_loaded_at=timestamp(rt.config_loaded_at), **_memory(rt))

    async def ValidateConfig(self, request: system_pb2.ValidateConfigRequest,
                             context: grpc.aio.ServicerContext) -> system_pb2.ValidateConfigResponse:
        which = request.WhichOneof("source")
        loop = asyncio.get_running_loop()
        try:
            if which == "text":
                await loop.run_in_executor(None, config_mod.parse_text, request.text, "<text>")
                path = "<text>"
            else:
                path = request.path or self._rt.loaded.path
                if not os.path.isabs(path):
                    raise InvalidRequest("path must be absolute (the daemon's working directory is not yours)",
                                         param="path")
                await loop.run_in_executor(None, config_mod.load, path)
        except ConfigErrors as exc:
            return system_pb2.ValidateConfigResponse(ok=False, problems=problems(exc), path=path)
        return system_pb2.ValidateConfigResponse(ok=True, path=path)

    async def Reload(self, request: system_pb2.ReloadRequest,
                     context: grpc.aio.ServicerContext) -> system_pb2.ReloadResponse:
        result = await self._rt.reload()
        return system_pb2.ReloadResponse(config_path=result.path, applied=list(result.applied),
                                         restart_required=list(result.restart_required))

    async def GetVram(self, request: system_pb2.GetVramRequest,
                      context: grpc.aio.ServicerContext) -> system_pb2.VramReport:
        return vram_report(local_models(self._rt))


def _memory(rt: "Runtime") -> dict[str, str]:
    snap = latest_snapshot(rt.local) if rt.local is not None else None
    return {} if snap is None else {"memory_mode": snap.mode, "memory_reason": snap.reason}


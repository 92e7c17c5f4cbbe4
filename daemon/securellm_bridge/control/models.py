"""``securellm.control.v1.Models``: the local model registry and scheduler over the socket.

Load and Switch stream the scheduler's progress reports as they happen. A client that goes
away does not stop a load: requests may be waiting for the same model. Load, Unload and
Switch write ``model_load`` / ``model_unload`` audit records for what they changed.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncGenerator, AsyncIterator

import grpc

from .._pb import models_pb2, models_pb2_grpc
from ..errors import Conflict, InvalidRequest, NotFound
from ..local.views import MIB
from .local_convert import latest_snapshot, local_model, local_models

if TYPE_CHECKING:
    from ..local.registry import ModelEntry
    from ..local.scheduler import Slot
    from ..local.service import LocalModels
    from ..runtime import Runtime

SOURCE = "control"


def _entry(local: "LocalModels", name: str) -> "ModelEntry":
    if not name:
        raise InvalidRequest("a model name is required", param="name")
    entry = local.registry.get(name)
    if entry is None:
        raise NotFound(f"no local model named {name!r} (see `securellmctl models list`)", code="model_not_found")
    return entry


def _usable(local: "LocalModels", name: str) -> "ModelEntry":
    entry = _entry(local, name)
    if not entry.usable:
        raise Conflict(f"local model {name!r} is {entry.status}: {entry.error or 'no usable file'}",
                       code="model_unavailable")
    return entry


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, runtime: "Runtime") -> None:
        self._rt = runtime

    def _view(self, local: "LocalModels", entry: "ModelEntry", *, metadata: bool = False) -> models_pb2.LocalModel:
        return local_model(entry, local.scheduler.slots.get(entry.name), latest_snapshot(local), metadata=metadata)

    async def List(self, request: models_pb2.ListModelsRequest,
                   context: grpc.aio.ServicerContext) -> models_pb2.ListModelsResponse:
        local = local_models(self._rt)
        return models_pb2.ListModelsResponse(models=[self._view(local, e) for e in local.registry.list()])

    async def Get(self, request: models_pb2.GetModelRequest,
                  context: grpc.aio.ServicerContext) -> models_pb2.LocalModel:
        local = local_models(self._rt)
        return self._view(local, _entry(local, request.name), metadata=True)

    async def Scan(self, request: models_pb2.ScanModelsRequest,
                   context: grpc.aio.ServicerContext) -> models_pb2.ScanModelsResponse:
        r = await local_models(self._rt).registry.scan()
        return models_pb2.ScanModelsResponse(added=r.added, updated=r.updated, missing=r.missing,
                                             corrupt=r.corrupt, unchanged=r.unchanged, removed=r.removed)

    async def Load(self, request: models_pb2.LoadModelRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[models_pb2.LoadProgress]:
        local = local_models(self._rt)
        entry = _usable(local, request.name)
        gpu_layers = request.gpu_layers if request.HasField("gpu_layers") else None
        ctx = request.ctx if request.HasField("ctx") else None
        if ctx == 0:
            raise InvalidRequest("ctx must be at least 1", param="ctx")
        async with aclosing(self._load(local, entry, gpu_layers, ctx)) as loading:
            async for progress in loading:
                yield progress

    async def Unload(self, request: models_pb2.UnloadModelRequest,
                     context: grpc.aio.ServicerContext) -> models_pb2.UnloadModelResponse:
        local = local_models(self._rt)
        entry = _entry(local, request.name)
        slot = local.scheduler.slots.get(entry.name)
        if slot is None:
            raise NotFound(f"local model {entry.name!r} is not loaded", code="model_not_loaded")
        await self._unload(local, slot, "unloaded with securellmctl")
        return models_pb2.UnloadModelResponse(model=self._view(local, entry))

    async def Switch(self, request: models_pb2.SwitchModelRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[models_pb2.LoadProgress]:
        local = local_models(self._rt)
        old = _entry(local, request.from_model)
        new = _usable(local, request.to_model)
        if old.name == new.name:
            raise InvalidRequest("from_model and to_model are the same model", param="to_model")
        slot = local.scheduler.slots.get(old.name)
        if slot is None:
            raise Conflict(f"local model {old.name!r} is not loaded; use `securellmctl models load {new.name}`",
                           code="model_not_loaded")
        await self._unload(local, slot, f"switched to {new.name}")
        yield models_pb2.LoadProgress(model=old.name, stage="unloaded", detail=f"switching to {new.name}")
        async with aclosing(self._load(local, new, None, None)) as loading:
            async for progress in loading:
                yield progress

    async def _unload(self, local: "LocalModels", slot: "Slot", reason: str) -> None:
        await local.scheduler.unload(slot.name, reason)
        self._rt.audit.admin("model_unload", model=slot.name, backend=slot.instance.kind, reason=reason,
                             pid=slot.instance.pid, source=SOURCE)

    async def _load(self, local: "LocalModels", entry: "ModelEntry", gpu_layers: int | None,
                    ctx: int | None) -> AsyncGenerator[models_pb2.LoadProgress, None]:
        """The scheduler's progress reports for loading ``entry``, then "ready" with the model."""
        name = entry.name
        was_loaded = name in local.scheduler.slots
        reports: asyncio.Queue[models_pb2.LoadProgress] = asyncio.Queue()

        def progress(stage: str, detail: str, percent: float) -> None:
            if stage != "ready":  # sent below, with the loaded model
                reports.put_nowait(models_pb2.LoadProgress(model=name, stage=stage, detail=detail,
                                                           percent=percent if percent >= 0 else None))

        task = asyncio.ensure_future(local.scheduler.load(name, gpu_layers=gpu_layers, ctx=ctx, progress=progress))
        getter: asyncio.Future[models_pb2.LoadProgress] | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(reports.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not reports.empty():
                yield reports.get_nowait()
            slot = task.result()
        finally:
            if getter is not None:
                getter.cancel()
            task.cancel()  # only this call's wait: the load itself goes on for whoever else waits
        if not was_loaded:
            self._rt.audit.admin("model_load", model=name, backend=slot.instance.kind, pid=slot.instance.pid,
                                 gpu_layers=slot.gpu_layers, ctx=slot.ctx, memory_mib=round(slot.bytes / MIB, 1),
                                 source=SOURCE)
        detail = "already loaded" if was_loaded else f"pid {slot.instance.pid}"
        yield models_pb2.LoadProgress(model=name, stage="ready", detail=detail, percent=100.0,
                                      loaded=self._view(local, entry))

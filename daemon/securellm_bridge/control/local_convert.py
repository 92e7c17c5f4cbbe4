"""Local models, memory snapshots and model events as protobuf messages."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._pb import models_pb2, system_pb2
from ..errors import Unavailable
from ..local.events import Event
from ..local.views import MIB, ProcessUse, idle_seconds, loaded_at, model_owners, process_uses
from .convert import timestamp

if TYPE_CHECKING:
    from ..local.registry import ModelEntry
    from ..local.scheduler import Slot
    from ..local.service import LocalModels
    from ..local.vram import MemorySnapshot
    from ..runtime import Runtime


def local_models(rt: "Runtime") -> "LocalModels":
    if rt.local is None:
        raise Unavailable("local models are not started yet")
    return rt.local


def latest_snapshot(local: "LocalModels") -> "MemorySnapshot | None":
    """The monitor's latest snapshot; None before the first one."""
    try:
        return local.monitor.snapshot()
    except Unavailable:
        return None


def status(entry: "ModelEntry", slot: "Slot | None") -> str:
    if slot is not None:
        return "loaded"
    return "available" if entry.usable else entry.status


def _metadata_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def loaded_model(slot: "Slot", snap: "MemorySnapshot | None") -> models_pb2.LoadedModel:
    pid = slot.instance.pid
    measured = snap.processes.get(pid) if snap is not None and pid is not None else None
    return models_pb2.LoadedModel(
        pid=pid, state=slot.instance.state, memory_bytes=slot.bytes, measured_bytes=measured,
        gpu_layers=slot.gpu_layers, ctx=slot.ctx, in_flight=slot.in_flight, idle_seconds=idle_seconds(slot),
        loaded_at=timestamp(loaded_at(slot)), priority=slot.priority, pinned=slot.pinned,
        keep_alive_seconds=slot.keep_alive)


def local_model(entry: "ModelEntry", slot: "Slot | None", snap: "MemorySnapshot | None", *,
                metadata: bool = False) -> models_pb2.LocalModel:
    return models_pb2.LocalModel(
        name=entry.name, status=status(entry, slot), backend=entry.backend, format=entry.format,
        path=entry.path or "", error=entry.error or "", size_bytes=entry.size_bytes,
        architecture=entry.architecture or "", layer_count=entry.layer_count,
        context_length=entry.context_length, quantization=entry.quantization or "",
        created_at=timestamp(entry.created_at), last_scanned=timestamp(entry.last_scanned),
        priority=entry.priority, pinned=entry.pinned, ctx=entry.ctx, gpu_layers=entry.gpu_layers,
        keep_alive_seconds=entry.keep_alive, parallel=entry.parallel, extra_args=list(entry.extra_args),
        configured=entry.configured, loaded=loaded_model(slot, snap) if slot is not None else None,
        metadata={k: _metadata_value(v) for k, v in entry.metadata.items()} if metadata else {})


def _process(p: ProcessUse) -> system_pb2.GpuProcess:
    return system_pb2.GpuProcess(pid=p.pid, owner=p.owner, used_bytes=p.used_bytes, model=p.model)


def vram_report(local: "LocalModels") -> system_pb2.VramReport:
    snap = local.monitor.snapshot()
    owners = model_owners(local.scheduler)
    gpus = [system_pb2.Gpu(index=d.index, name=d.name, total_bytes=d.total_bytes, used_bytes=d.used_bytes,
                           free_bytes=d.free_bytes, utilization_percent=d.utilization_percent,
                           processes=[_process(p) for p in process_uses(d.processes, owners)])
            for d in snap.devices]
    return system_pb2.VramReport(
        mode=snap.mode, reason=snap.reason, gpus=gpus, total_bytes=snap.total_bytes, used_bytes=snap.used_bytes,
        free_bytes=snap.free_bytes, used_percent=snap.used_percent,
        processes=[_process(p) for p in process_uses(snap.processes, owners)], taken_at=timestamp(snap.taken_at),
        threshold_percent=local.cfg.vram.threshold_percent, headroom_bytes=local.cfg.vram.headroom_mib * MIB)


def model_event(ev: Event) -> models_pb2.ModelEvent:
    return models_pb2.ModelEvent(kind=ev.kind, model=ev.model, state=ev.state, reason=ev.reason,
                                 detail=dict(ev.detail), at=timestamp(ev.at))

"""Read-only views of local models and their memory, the same for both planes: the HTTPS
``/health/vram`` JSON and the control plane's ``System.GetVram`` and ``Models.List``.

Everything here reads in-memory state (the monitor's latest snapshot, the scheduler's
slots): nothing blocks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Unavailable
from .vram import MIB, DeviceMemory, MemorySnapshot, Owner

if TYPE_CHECKING:
    from .scheduler import Scheduler, Slot
    from .service import LocalModels


@dataclass(frozen=True)
class ProcessUse:
    """Memory held by one owner: a process (``pid``), or a name (simulated mode)."""

    pid: int | None
    owner: str
    used_bytes: int
    #: The local model(s) it serves, comma-separated; empty for anything else.
    model: str


def model_owners(scheduler: "Scheduler") -> dict[Owner, str]:
    """The local model(s) behind each memory owner: by backend pid and by model name."""
    names: dict[Owner, list[str]] = {}
    for name, slot in sorted(scheduler.slots.items()):
        names.setdefault(name, []).append(name)
        pid = slot.instance.pid
        if pid is not None:
            names.setdefault(pid, []).append(name)  # one Ollama server may serve several
    return {owner: ",".join(models) for owner, models in names.items()}


def process_uses(processes: Mapping[Owner, int], owners: Mapping[Owner, str]) -> list[ProcessUse]:
    def key(item: tuple[Owner, int]) -> tuple[int, str]:
        owner = item[0]
        return (0, f"{owner:012d}") if isinstance(owner, int) else (1, owner)

    return [ProcessUse(o if isinstance(o, int) else None, "" if isinstance(o, int) else o, used, owners.get(o, ""))
            for o, used in sorted(processes.items(), key=key)]


def idle_seconds(slot: "Slot") -> float:
    """Seconds since the model's last request ended; 0 while one runs."""
    return 0.0 if slot.in_flight else max(0.0, time.monotonic() - slot.last_used)


def loaded_at(slot: "Slot") -> float:
    """When the model became ready, as ``time.time()`` (the slot keeps monotonic time)."""
    return time.time() - (time.monotonic() - slot.loaded_at)


def _process_json(p: ProcessUse) -> dict[str, Any]:
    return {"pid": p.pid, "owner": p.owner or None, "used_bytes": p.used_bytes, "model": p.model or None}


def _device_json(d: DeviceMemory, owners: Mapping[Owner, str]) -> dict[str, Any]:
    return {"index": d.index, "name": d.name, "total_bytes": d.total_bytes, "used_bytes": d.used_bytes,
            "free_bytes": d.free_bytes, "utilization_percent": d.utilization_percent,
            "processes": [_process_json(p) for p in process_uses(d.processes, owners)]}


def vram_json(local: "LocalModels | None") -> dict[str, Any]:
    """The memory monitor's latest snapshot, with the models each process serves, as JSON."""
    if local is None:
        raise Unavailable("local models are not started yet")
    snap: MemorySnapshot = local.monitor.snapshot()
    owners = model_owners(local.scheduler)
    cfg = local.cfg.vram
    return {
        "mode": snap.mode, "reason": snap.reason, "taken_at": snap.taken_at,
        "total_bytes": snap.total_bytes, "used_bytes": snap.used_bytes, "free_bytes": snap.free_bytes,
        "used_percent": round(snap.used_percent, 2), "threshold_percent": cfg.threshold_percent,
        "headroom_bytes": cfg.headroom_mib * MIB,
        "gpus": [_device_json(d, owners) for d in snap.devices],
        "processes": [_process_json(p) for p in process_uses(snap.processes, owners)],
    }

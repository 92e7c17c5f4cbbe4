"""Read NVIDIA GPU memory through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Every function here blocks (NVML calls into the driver): the monitor runs them on its own
worker thread. Without a driver ``nvmlInit`` raises ``NVMLError_LibraryNotFound`` (or
``DriverNotLoaded``); :meth:`NvmlReader.open` turns that into :class:`NvmlUnavailable` with
a readable reason, and the monitor falls back to system RAM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import pynvml

from .vram import DeviceMemory, MemorySnapshot, Owner, aggregate

log = logging.getLogger(__name__)


class NvmlUnavailable(Exception):
    """NVML cannot be used here; ``str()`` says why."""


class NvmlReader:
    """Memory of every GPU NVML sees, with per-process use and utilization."""

    mode = "gpu"

    def __init__(self, handles: list[object], names: list[str], reason: str) -> None:
        self._handles = handles
        self._names = names
        self.reason = reason

    @classmethod
    def open(cls) -> NvmlReader:
        """Initialise NVML and find the GPUs; :class:`NvmlUnavailable` when there are none."""
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                raise NvmlUnavailable("NVML reports no GPU")
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except (pynvml.NVMLError, NvmlUnavailable) as exc:
            _shutdown()
            raise NvmlUnavailable(str(exc) if isinstance(exc, NvmlUnavailable) else f"NVML: {exc}") from exc
        return cls(handles, names, f"NVML: {count} GPU(s), driver {driver}")

    def read(self, owners: Mapping[Owner, int]) -> MemorySnapshot:
        """One snapshot of every GPU (``owners`` is not needed: NVML lists the processes itself)."""
        try:
            devices = tuple(self._device(i, h) for i, h in enumerate(self._handles))
        except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        return aggregate("gpu", self.reason, devices, time.time())

    def close(self) -> None:
        _shutdown()

    def _device(self, index: int, handle: object) -> DeviceMemory:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return DeviceMemory(index=index, name=self._names[index], total_bytes=int(mem.total),
                            used_bytes=int(mem.used), free_bytes=int(mem.free),
                            utilization_percent=_utilization(handle), processes=_processes(handle))


def _utilization(handle: object) -> int | None:
    try:
        return int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission):
        return None


def _processes(handle: object) -> dict[Owner, int]:
    """pid -> bytes of GPU memory; a process both computing and drawing is listed once."""
    out: dict[Owner, int] = {}
    for query in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            procs = query(handle)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission):
            continue
        for proc in procs:
            if proc.usedGpuMemory is not None:  # None: not available (e.g. Windows WDDM)
                out[int(proc.pid)] = max(out.get(int(proc.pid), 0), int(proc.usedGpuMemory))
    return out


def _shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.debug("nvmlShutdown: %s", exc)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

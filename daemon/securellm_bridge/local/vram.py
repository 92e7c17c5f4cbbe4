"""How much accelerator memory is in use and by whom, behind one interface for three modes.

* ``gpu``: NVIDIA GPUs through NVML (:mod:`.vram_nvml`): per-GPU memory and utilization,
  and the memory of every process on each GPU.
* ``cpu``: no driver or no GPU. System RAM from ``/proc/meminfo`` (used = MemTotal -
  MemAvailable) and the resident memory (``VmRSS``) of each registered pid.
* ``simulated``: ``[vram] simulate_total_mib`` set. One GPU of that size whose usage is
  exactly what callers :meth:`MemoryMonitor.register` (for tests and hosts without a GPU).

Every mode behaves the same way: a snapshot is taken by :meth:`MemoryMonitor.refresh` or by
the polling task every ``polling_interval_seconds``, always on the monitor's own worker
thread, and :meth:`MemoryMonitor.snapshot` returns the latest one without blocking. A
registration shows in the next snapshot, as a process's allocation would on a real GPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..config.local import VramConfig
from ..errors import Unavailable
from .estimate import MIB

log = logging.getLogger(__name__)

Mode = Literal["gpu", "cpu", "simulated"]
#: A process id, or a name for memory that has no process (yet).
Owner = int | str


@dataclass(frozen=True)
class DeviceMemory:
    """One GPU."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    #: Percent of time a kernel ran over the last sample period; None where not supported.
    utilization_percent: int | None
    #: Owner (pid) -> bytes used on this GPU.
    processes: Mapping[Owner, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory at one moment. Totals are over all devices (in ``cpu`` mode: system RAM)."""

    mode: Mode
    #: Why this mode, e.g. "NVML: 1 GPU(s), driver 550.54" or why there is no GPU.
    reason: str
    #: Empty in ``cpu`` mode.
    devices: tuple[DeviceMemory, ...]
    #: Owner (pid) -> bytes, summed over devices; in ``cpu`` mode the RSS of registered pids.
    processes: Mapping[Owner, int]
    total_bytes: int
    used_bytes: int
    free_bytes: int
    #: ``time.time()`` when it was taken.
    taken_at: float

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


def aggregate(mode: Mode, reason: str, devices: tuple[DeviceMemory, ...], taken_at: float) -> MemorySnapshot:
    """A snapshot whose totals and process map add up the devices."""
    processes: dict[Owner, int] = {}
    for device in devices:
        for owner, used in device.processes.items():
            processes[owner] = processes.get(owner, 0) + used
    return MemorySnapshot(mode, reason, devices, processes, sum(d.total_bytes for d in devices),
                          sum(d.used_bytes for d in devices), sum(d.free_bytes for d in devices), taken_at)


class MemoryReader(Protocol):
    """Takes snapshots; every method blocks and runs on the monitor's worker thread."""

    mode: Mode
    reason: str

    def read(self, owners: Mapping[Owner, int]) -> MemorySnapshot: ...

    def close(self) -> None: ...


class SimulatedReader:
    """A GPU of a fixed size whose usage is the registered bytes: nothing else uses it."""

    mode: Mode = "simulated"

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.reason = f"simulated GPU of {total_bytes // MIB} MiB ([vram] simulate_total_mib)"

    def read(self, owners: Mapping[Owner, int]) -> MemorySnapshot:
        used = sum(owners.values())
        device = DeviceMemory(0, "Simulated GPU", self.total_bytes, used, max(self.total_bytes - used, 0),
                              0, dict(owners))
        return aggregate(self.mode, self.reason, (device,), time.time())

    def close(self) -> None:
        pass


class CpuReader:
    """System RAM, and the RSS of registered pids."""

    mode: Mode = "cpu"

    def __init__(self, reason: str, proc: str = "/proc") -> None:
        self.reason = reason
        self._proc = proc

    def read(self, owners: Mapping[Owner, int]) -> MemorySnapshot:
        info = _meminfo(os.path.join(self._proc, "meminfo"))
        total = info["MemTotal"]
        free = info.get("MemAvailable", info.get("MemFree", 0))
        processes: dict[Owner, int] = {}
        for pid in _pids(owners):
            rss = _rss(os.path.join(self._proc, str(pid), "status"))
            if rss is not None:
                processes[pid] = rss
        return MemorySnapshot(self.mode, self.reason, (), processes, total, total - free, free, time.time())

    def close(self) -> None:
        pass


def open_reader(cfg: VramConfig) -> MemoryReader:
    """The reader for this host (blocking: NVML initialises the driver)."""
    if cfg.simulate_total_mib is not None:
        return SimulatedReader(cfg.simulate_total_mib * MIB)
    # Imported here: pynvml loads only when the real hardware is asked for.
    from .vram_nvml import NvmlReader, NvmlUnavailable

    try:
        reader = NvmlReader.open()
    except NvmlUnavailable as exc:
        return CpuReader(f"no usable GPU ({exc}); using system RAM")
    try:
        reader.read({})
    except NvmlUnavailable as exc:
        reader.close()
        return CpuReader(f"no usable GPU (reading it failed: {exc}); using system RAM")
    return reader


class MemoryMonitor:
    """Polls a :class:`MemoryReader`; see the module docstring. The reader (the mode) is chosen
    at the first refresh, off the loop."""

    #: Keys that choose the mode: a reload that changes them needs a restart.
    RESTART_KEYS = ("vram.simulate_total_mib",)

    def __init__(self, cfg: VramConfig) -> None:
        self._cfg = cfg
        self._owners: dict[Owner, int] = {}
        self._reader: MemoryReader | None = None
        self._snapshot: MemorySnapshot | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vram")
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def register(self, owner: Owner, nbytes: int) -> None:
        """Say that ``owner`` (a pid, or a name until there is one) holds about ``nbytes``.

        In ``cpu`` mode the RSS of registered pids is reported; on a simulated GPU the bytes
        are its usage; NVML reports every GPU process by itself. Registering again replaces.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        self._owners[owner] = nbytes

    def unregister(self, owner: Owner) -> None:
        self._owners.pop(owner, None)

    def snapshot(self) -> MemorySnapshot:
        """The latest snapshot; :class:`Unavailable` before the first :meth:`refresh`."""
        if self._snapshot is None:
            raise Unavailable("memory monitor has not taken a snapshot yet")
        return self._snapshot

    async def refresh(self) -> MemorySnapshot:
        """Take a snapshot now. On failure the previous one stays and :class:`Unavailable` is raised."""
        loop = asyncio.get_running_loop()
        snap = await loop.run_in_executor(self._executor, self._read, dict(self._owners))
        self._snapshot = snap
        return snap

    def start(self) -> None:
        """Poll every ``polling_interval_seconds``, starting now."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vram-monitor")

    async def stop(self) -> None:
        """Stop polling and release NVML. The monitor cannot be used afterwards."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    def reconfigure(self, cfg: VramConfig) -> None:
        """Apply a reloaded ``[vram]``: the polling interval applies from the next poll."""
        self._cfg = cfg

    def _read(self, owners: dict[Owner, int]) -> MemorySnapshot:  # on the worker thread
        try:
            if self._reader is None:
                self._reader = open_reader(self._cfg)
                log.info("memory monitor: %s mode: %s", self._reader.mode, self._reader.reason)
            return self._reader.read(owners)
        except Exception as exc:
            raise Unavailable(f"memory query failed: {exc}") from exc

    def _close(self) -> None:  # on the worker thread
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                if self._failing:
                    log.info("memory monitor: reading works again")
                self._failing = False
            except Unavailable as exc:
                if not self._failing:
                    log.warning("memory monitor: %s; keeping the last snapshot", exc)
                self._failing = True
            await asyncio.sleep(self._cfg.polling_interval_seconds)


def _meminfo(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _pids(owners: Iterable[Owner]) -> list[int]:
    return [o for o in owners if isinstance(o, int) and not isinstance(o, bool) and o > 0]


def _rss(status_path: str) -> int | None:
    """VmRSS in bytes; None when the process is gone, unreadable or has no memory (a zombie)."""
    try:
        with open(status_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None

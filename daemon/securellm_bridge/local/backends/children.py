"""Child processes of the daemon: their environment, their death with the daemon, and a
record on disk of which ones run, so that the next run can kill leftovers.

:func:`child_environment` passes a child only an allowlist of the daemon's variables;
:func:`die_with_parent` is the ``preexec_fn`` that sets ``PR_SET_PDEATHSIG``.

Every child runs in its own session and dies with the daemon (``PR_SET_PDEATHSIG``), but
its own children (an ``ollama serve``'s runners, say) do not, and a child can outlive a
daemon whose forking thread ended first. So each child's pid, process group and kernel
start time are kept in a small JSON file in the state directory; at start-up
:func:`kill_stale_children` kills, with ``SIGKILL``, every recorded process group whose
leader is still the recorded process, or whose leader is gone but whose members remain.
A process is recognised by its pid *and* its start time (``/proc/PID/stat``, in clock
ticks): a pid reused by an unrelated process never matches, which a ``/proc/PID/cmdline``
comparison cannot promise (and a wrapper script that execs changes its command line).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Variables a child inherits from the daemon; everything else (provider keys, LLAMA_ARG_*,
#: OLLAMA_*) stays out unless a backend sets it on purpose.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
                 "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """One child process as the registry remembers it."""

    name: str
    pid: int
    pgid: int
    #: Clock ticks since boot when the process started (``/proc/PID/stat`` field 22).
    start_time: int
    argv0: str


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (state first), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[tuple[int, int]]:
    """``(pid, start_time)`` of every live process in process group ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append((int(entry.name), int(fields[19])))
    return members


def _is_stale(record: ChildRecord) -> bool:
    started = start_time(record.pid)
    if started is not None:  # the leader, or an unrelated process that reuses its pid
        return started == record.start_time and is_alive(record.pid)
    # The leader is gone. The kernel reuses no pid while a group of that id has members, so
    # members of group ``pgid`` started after the leader are the leader's own leftovers.
    return record.pgid == record.pid and any(
        begun >= record.start_time for _, begun in _group_members(record.pgid))


def _kill_stale(path: Path, wait: float) -> list[ChildRecord]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable child registry %s: %s", path, exc)
        entries = []
    killed: list[ChildRecord] = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            record = ChildRecord(**entry)
        except TypeError:
            continue
        if not _is_stale(record):
            continue
        try:
            if record.pgid == record.pid:
                os.killpg(record.pgid, signal.SIGKILL)
            else:
                os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        log.warning("killed %s (pid %d, %s) left over from a previous run", record.name,
                    record.pid, record.argv0,
                    extra={"SECURELLM_MODEL": record.name, "SECURELLM_PID": record.pid})
        killed.append(record)
    deadline = time.monotonic() + wait
    while any(is_alive(r.pid) for r in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    path.unlink(missing_ok=True)
    return killed


async def kill_stale_children(path: Path, *, wait: float = 5.0) -> list[ChildRecord]:
    """Kill the leftovers recorded in ``path`` by a previous run, then remove the file.

    Call it at start-up, before the first backend starts with a :class:`ChildRegistry` on the
    same path. Waits up to ``wait`` seconds for the killed processes to die (their memory,
    VRAM included, is free only then). Returns the records of the groups it killed.
    """
    return await asyncio.to_thread(_kill_stale, path, wait)


class ChildRegistry:
    """The live children of this daemon, mirrored to ``path`` (written off the event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[int, ChildRecord] = {}
        self._lock = asyncio.Lock()

    @property
    def records(self) -> list[ChildRecord]:
        return list(self._records.values())

    async def add(self, name: str, pid: int, argv0: str) -> None:
        """Remember a child that leads its own process group (``start_new_session``)."""
        started = await asyncio.to_thread(start_time, pid)
        if started is None:
            return
        self._records[pid] = ChildRecord(name=name, pid=pid, pgid=pid, start_time=started,
                                         argv0=argv0)
        await self._save()

    async def remove(self, pid: int) -> None:
        if self._records.pop(pid, None) is not None:
            await self._save()

    async def _save(self) -> None:
        async with self._lock:
            snapshot = [asdict(r) for r in self._records.values()]
            try:
                await asyncio.to_thread(self._write, snapshot)
            except OSError as exc:
                log.warning("cannot write the child registry %s: %s", self.path, exc)

    def _write(self, snapshot: list[dict[str, object]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, self.path)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's :data:`INHERITED_ENV` variables that are set, plus ``extra``."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(extra or {})
    return env


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when the forking thread exits."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec

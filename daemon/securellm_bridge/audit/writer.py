"""The audit log as the daemon uses it: emitting costs the event loop a few µs a record.

Building, chaining and delivering records was the largest per-request CPU cost of the
daemon, and in a writer thread it competed with the event loop for the GIL. It now runs in
a writer process (``child.py``). Here, emitting a record appends a compact tuple to a list;
a timer hands the list to ``supervisor.py`` every ``SEND_INTERVAL_S`` at most, which numbers
the records, keeps them until the writer acknowledges them, and writes one message to its pipe.
Why a timer, not once per loop iteration: each pipe write wakes the writer, which then saves
the chain state with fsync for its (small) batch; under load, writes per iteration cost the
event loop ~7 % of its CPU in ``write`` alone (py-spy), and the writer ~120 µs a record.
``flush()`` and ``close()`` send at once; see supervisor.py for the delivery guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Mapping, Sequence

from ..config.security import AuditConfig
from ..errors import ConfigErrors
from . import record
from .events import ADMIN_EVENTS, ERR, EVENTS, SECURITY_EVENTS, request_priority
from .pipe import Record, Settings
from .record import FieldValue, RequestAudit, request_row
from .supervisor import Supervisor

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
#: How long a record may wait in the daemon before it is sent to the writer process.
SEND_INTERVAL_S = 0.005
_APP_LOGGER = "securellm_bridge"


class AuditLog:
    """The daemon's audit trail. Create it, ``await start()``, emit, ``await close()``.

    Events emitted before ``start()`` are queued and written once it has run. Emit from the
    event loop's thread; a call from another thread is handed to the loop.
    """

    #: Config keys read only at start: the files and the chain key.
    RESTART_KEYS = tuple(f"security.audit.{k}"
                         for k in ("file", "rotate", "rotate_max_bytes", "retention_days", "chain_key"))

    def __init__(self, cfg: AuditConfig, state_dir: str) -> None:
        self._cfg = cfg
        self._state_dir = state_dir
        self._writer = Supervisor()
        self._new: list[Record] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the API called from the event loop ---------------------------------------------------

    def request(self, rec: RequestAudit) -> None:
        """Record one inference request; prompt/response only when the config says so."""
        cfg = self._cfg
        if cfg.enabled:
            row = request_row(rec, with_prompt=cfg.log_requests, with_response=cfg.log_responses)
            self._emit(("request", row, time.time(), request_priority(rec.status)))

    @property
    def enabled(self) -> bool:
        """Whether records are written now (``[security.audit] enabled``, live on reload)."""
        return self._cfg.enabled

    def admin(self, kind: str, *, priority: int | None = None, **fields: FieldValue) -> None:
        """``key_created``, ``key_revoked``, ``model_load``, ``model_unload``, ``config_reload``,
        ``config_change``."""
        self._named(kind, ADMIN_EVENTS, priority, fields)

    def security(self, kind: str, *, priority: int | None = None, **fields: FieldValue) -> None:
        """``auth_failure``, ``rate_limited``, ``injection_flagged``, ``dlp_blocked``."""
        self._named(kind, SECURITY_EVENTS, priority, fields)

    def config_reloaded(self, path: str, changed: Sequence[str], restart_required: Sequence[str]) -> None:
        """A reload was applied: the changed keys are named, never their values."""
        self.admin("config_reload", result="applied", path=path, changed=list(changed) or None,
                   restart_required=list(restart_required) or None)

    def config_reload_failed(self, path: str, exc: ConfigErrors) -> None:
        """A reload was refused: the keys with problems are named, not the messages (they quote values)."""
        self.admin("config_reload", priority=ERR, result="failed", path=path,
                   problems=sorted({e.key for e in exc.errors if e.key}) or None)

    def configure(self, cfg: AuditConfig) -> None:
        """Apply a reloaded config: ``enabled``, ``log_requests`` and ``log_responses`` are live
        (they are applied here, as records are emitted; the writer process never sees them)."""
        self._cfg = cfg

    @property
    def last_seq(self) -> int:
        """The last sequence number the writer process handed out (it reports it with each ACK)."""
        return self._writer.last_seq

    @property
    def writer_pid(self) -> int | None:
        """The pid of the running audit writer process."""
        return self._writer.pid

    @property
    def writer_restarts(self) -> int:
        """How many times a new writer process was started after one died or could not start."""
        return self._writer.restarts

    def _named(self, kind: str, allowed: frozenset[str], priority: int | None,
               fields: Mapping[str, FieldValue]) -> None:
        if kind not in allowed:
            raise ValueError(f"unknown audit event {kind!r}; expected one of {', '.join(sorted(allowed))}")
        record.check_fields(fields)
        if self._cfg.enabled:
            p = EVENTS[kind].priority if priority is None else priority
            self._emit((kind, dict(fields), time.time(), p))

    def _emit(self, rec: Record) -> None:
        if self._loop_thread == threading.get_ident():
            self._new.append(rec)
            if self._timer is None:
                self._timer = self._loop.call_later(SEND_INTERVAL_S, self._send)  # type: ignore[union-attr]
        elif self._loop is None:
            self._new.append(rec)  # before start(): sent once it has run
        else:
            self._loop.call_soon_threadsafe(self._emit, rec)

    def _send(self) -> None:
        """Hand what was emitted to the writer, as one message."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._new:
            return
        batch, self._new = self._new, []
        self._writer.submit(batch)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process; it loads the key and the chain position and re-sends a
        batch interrupted by a crash. Raises StateError when the key or state is unusable."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        level = logging.getLevelName(logging.getLogger(_APP_LOGGER).getEffectiveLevel())
        cfg = self._cfg
        settings: Settings = {
            "state_dir": self._state_dir, "file": cfg.file, "rotate": cfg.rotate,
            "rotate_max_bytes": cfg.rotate_max_bytes, "retention_days": cfg.retention_days,
            "chain_key": cfg.chain_key.reveal() if cfg.chain_key is not None else None, "log_level": level}
        await self._writer.start(settings)
        self._send()

    async def flush(self) -> None:
        """Wait until every event emitted so far has been written."""
        self._send()
        await self._writer.flush()

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write everything emitted so far, then end the writer process."""
        self._send()
        await self._writer.close(timeout)

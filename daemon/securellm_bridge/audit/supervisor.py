"""Feeding the audit writer process, and keeping every record until it is written.

Records get consecutive ids in the daemon. Each is kept until the writer acknowledges it as
delivered (journald or file). When the writer dies, the error is logged, a new one is
started after a backoff (0.1 s, doubling to 30 s, back to 0.1 s once one acknowledges
records), and every unacknowledged record is sent to it again. Delivery is therefore at
least once: the records of the batch in flight at a crash can appear twice (the new writer
re-sends that batch from ``audit.state`` under its original numbers, then numbers the
re-sent records anew). While no writer can be started, records wait in memory; they are
counted in ``securellm_audit_errors_total`` and a critical error is logged at every try.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ..errors import StateError
from .metrics import ERRORS, FALLBACK, RECORDS, RESTARTS
from .pipe import INIT, Record, Settings, encode_records, frame
from .process import WriterProcess
from .state import STATE_FILE

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 30.0
#: Records per RECORDS message when a large backlog is (re-)sent.
FRAME_RECORDS = 4096
#: Unacknowledged records past which a warning is logged (once until the backlog drains).
BACKLOG_WARN = 50_000

_JOURNAL_RECORDS = RECORDS.labels(sink="journal")
_FILE_RECORDS = RECORDS.labels(sink="file")


class _NotStarted(NamedTuple):
    reason: str
    #: The writer refused to start (a StateError: key or state file unusable).
    refused: bool


class Supervisor:
    """``submit`` batches from the event loop; ``start``, ``flush``, ``close`` from coroutines."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.restarts = 0
        self._settings: Settings | None = None
        self._proc: WriterProcess | None = None
        self._ready = False
        #: Unacknowledged records as (id of the first, records), in id order.
        self._chunks: deque[tuple[int, Sequence[Record]]] = deque()
        self._next = 1
        self._acked = 0
        self._counted = 0  # records up to this id were counted as errors (no writer)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._backoff = BACKOFF_FIRST_S
        self._retry: asyncio.TimerHandle | None = None
        self._respawn_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._backlog_warned = False

    @property
    def pid(self) -> int | None:
        """The running writer's pid."""
        return self._proc.pid if self._proc is not None and self._ready else None

    @property
    def unacknowledged(self) -> int:
        return self._next - 1 - self._acked

    def submit(self, records: Sequence[Record]) -> None:
        """Keep ``records`` until acknowledged; send them now when a writer is ready."""
        if self._closed:
            ERRORS.inc(len(records))
            log.error("%d audit records emitted after the audit log was closed were not written", len(records))
            return
        first = self._next
        self._next += len(records)
        self._chunks.append((first, records))
        if self._ready:
            self._send(first, records)
        if not self._backlog_warned and self._next - self._acked > BACKLOG_WARN:
            self._backlog_warned = True
            log.warning("%d audit records wait for the audit writer process (%d bytes not yet in its pipe); "
                        "none is dropped, but the daemon's memory grows", self.unacknowledged,
                        self._proc.backlog() if self._proc is not None else 0)

    async def start(self, settings: Settings) -> None:
        """Start the writer and wait until it is ready. Raises StateError when it refuses (an
        unusable key or state file); when it cannot be started at all, retries in the background."""
        self._settings = settings
        problem = await self._spawn()
        if problem is None:
            return
        if problem.refused:
            self._settings = None
            raise StateError(problem.reason)
        self._cannot_start(problem.reason)

    async def flush(self) -> None:
        """Wait until every record submitted so far is acknowledged (while no writer can be
        started, that waits for one: the records are not given up)."""
        target = self._next - 1
        if target <= self._acked or self._settings is None or self._closing:
            return
        done = asyncio.get_running_loop().create_future()
        self._waiters.append((target, done))
        await done

    async def close(self, timeout: float) -> None:
        """Let the writer write everything submitted, then end it (EOF on its stdin)."""
        if self._closing:
            return
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
        if self._respawn_task is not None:
            await self._respawn_task
        if self._settings is not None and self._proc is None and self.unacknowledged:
            if (problem := await self._spawn()) is not None:  # a last try for what waits
                log.error("the audit writer process cannot be started: %s", problem.reason)
        proc = self._proc
        if proc is not None:
            proc.close_input()
            try:
                await asyncio.wait_for(asyncio.shield(proc.finished), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await asyncio.wait([proc.finished], timeout=timeout)
                self._lost(f"the audit writer process did not finish within {timeout:.0f} s (is journald "
                           f"accepting records?) and was killed", in_flight=True)
            proc.dispose()
        if self.unacknowledged:
            why = "the audit log did not start" if self._settings is None else "no audit writer process ran"
            self._lost(why, in_flight=False)
        self._closed = True
        for _, done in self._waiters:
            if not done.done():
                done.set_result(None)

    # -- the writer process -----------------------------------------------------------------

    async def _spawn(self) -> _NotStarted | None:
        """Start a writer, wait for READY and send it every unacknowledged record."""
        assert self._settings is not None
        try:
            proc = await WriterProcess.spawn(self._on_ack, self._on_finished)
        except OSError as exc:
            return _NotStarted(f"cannot run the Python interpreter: {exc}", False)
        self._proc, self._ready = proc, False
        proc.send(frame((INIT, self._settings)))
        try:
            problem = await asyncio.wait_for(asyncio.shield(proc.started), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            problem = (f"it was not ready within {START_TIMEOUT_S:.0f} s", False)
        if problem is None and proc.finished.done():  # died between READY and now
            problem = (f"it {proc.exit_status} right after it started", False)
        if problem is not None:
            self._proc = None
            proc.dispose()
            return _NotStarted(*problem)
        self._ready = True
        self.last_seq = max(self.last_seq, proc.last_seq)
        for first, records in self._chunks:
            if first <= self._acked:
                records = records[self._acked + 1 - first:]
                first = self._acked + 1
            self._send(first, records)
        return None

    def _send(self, first: int, records: Sequence[Record]) -> None:
        assert self._proc is not None
        for i in range(0, len(records), FRAME_RECORDS):
            part = records if len(records) <= FRAME_RECORDS else records[i:i + FRAME_RECORDS]
            self._proc.send(encode_records(first + i, part))

    def _on_ack(self, proc: WriterProcess, message: tuple[Any, ...]) -> None:
        _, last_id, seq, journal, file, fallback, errors = message
        self.last_seq = seq
        if journal:
            _JOURNAL_RECORDS.inc(journal)
        if file:
            _FILE_RECORDS.inc(file)
        if fallback:
            FALLBACK.inc(fallback)
        if errors:
            ERRORS.inc(errors)
        if last_id <= self._acked:
            return
        self._acked = last_id
        chunks = self._chunks
        while chunks and chunks[0][0] + len(chunks[0][1]) - 1 <= last_id:
            chunks.popleft()
        self._backoff = BACKOFF_FIRST_S
        waiters = self._waiters
        while waiters and waiters[0][0] <= last_id:
            _, done = waiters.popleft()
            if not done.done():
                done.set_result(None)
        if self._backlog_warned and self.unacknowledged < BACKLOG_WARN // 2:
            self._backlog_warned = False

    def _on_finished(self, proc: WriterProcess) -> None:
        if proc is not self._proc or not self._ready:
            return  # not started (``_spawn`` reports it), or replaced
        self._proc, self._ready = None, False
        if self._closing:
            return
        delay = self._schedule_restart()
        log.error("the audit writer process (pid %s) %s; %d unconfirmed audit records are re-sent to a new one "
                  "in %.1f s", proc.pid, proc.exit_status, self.unacknowledged, delay)

    def _schedule_restart(self) -> float:
        delay = self._backoff
        self._backoff = min(delay * 2, BACKOFF_MAX_S)
        self._retry = asyncio.get_running_loop().call_later(delay, self._restart)
        return delay

    def _restart(self) -> None:
        self._retry = None
        self._respawn_task = asyncio.ensure_future(self._respawn())

    async def _respawn(self) -> None:
        self.restarts += 1
        RESTARTS.inc()
        problem = await self._spawn()
        if problem is None:
            log.info("audit writer process restarted (pid %s); %d records re-sent", self.pid, self.unacknowledged)
        elif not self._closing:
            self._cannot_start(problem.reason)

    def _cannot_start(self, reason: str) -> None:
        delay = self._schedule_restart()
        self._count_unwritten()
        log.critical("the audit writer process cannot be started: %s; %d audit records wait unwritten in memory; "
                     "retrying in %.1f s", reason, self.unacknowledged, delay)

    def _count_unwritten(self) -> None:
        """Count the unacknowledged records not counted yet in ``securellm_audit_errors_total``."""
        uncounted = self._next - 1 - max(self._counted, self._acked)
        if uncounted > 0:
            ERRORS.inc(uncounted)
            self._counted = self._next - 1

    def _lost(self, why: str, *, in_flight: bool) -> None:
        self._count_unwritten()
        state = Path(self._settings["state_dir"]) / STATE_FILE if self._settings else STATE_FILE
        log.error("%s: %d audit records were not confirmed written%s", why, self.unacknowledged,
                  f"; the batch in flight stays in {state} and is re-sent at the next start" if in_flight else "")
        self._chunks.clear()
        self._acked = self._next - 1

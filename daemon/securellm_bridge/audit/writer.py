"""The audit log: ``emit`` on the event loop is O(1); one writer thread does the rest.

The writer thread takes queued events in batches, numbers and chains them, saves the chain
position ahead of delivery (``state.py``), and delivers each record to journald. A record
that journald cannot take (no socket, stale socket, error) goes to the JSONL file:
``[security.audit] file`` when set (which receives every record anyway), else
``audit-fallback.jsonl`` in the state dir. Nothing is dropped without an error log and a
count in ``securellm_audit_errors_total``. ``close()`` writes everything queued before it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

from ..config.security import AuditConfig
from ..errors import ConfigErrors
from . import chainkey, record
from .chain import canonical_text, key_id, link_canonical
from .events import ADMIN_EVENTS, ERR, EVENTS, SECURITY_EVENTS, EventType, request_priority
from .metrics import ERRORS, FALLBACK, RECORDS
from .record import CHAIN, FieldValue, RequestAudit
from .journald import JournalSink, JournalUnavailable
from .sinks import FileSink, to_line
from .state import ChainState, StateFile

log = logging.getLogger(__name__)

_JOURNAL_RECORDS = RECORDS.labels(sink="journal")
_FILE_RECORDS = RECORDS.labels(sink="file")

_REQUEST = EVENTS["request"]

FALLBACK_FILE = "audit-fallback.jsonl"
BATCH_MAX = 512
CLOSE_TIMEOUT_S = 10.0


class _Event(NamedTuple):
    event: EventType
    values: Mapping[str, FieldValue]
    when: float
    priority: int


@dataclass(frozen=True)
class _Flush:
    done: Callable[[], object]


_STOP = object()


class AuditLog:
    """The daemon's audit trail. Create it, ``await start()``, emit, ``await close()``.

    Events emitted before ``start()`` are queued and written once it has run.
    """

    #: Config keys read only at start: the files and the chain key.
    RESTART_KEYS = tuple(f"security.audit.{k}"
                         for k in ("file", "rotate", "rotate_max_bytes", "retention_days", "chain_key"))

    def __init__(self, cfg: AuditConfig, state_dir: str) -> None:
        self._cfg = cfg
        self._state_file = StateFile(state_dir)
        self._state = ChainState()
        self._key = b""
        self._journal = JournalSink()
        self._file = _file_sink(cfg, Path(cfg.file)) if cfg.file else None
        self._fallback = self._file or _file_sink(cfg, Path(state_dir) / FALLBACK_FILE)
        self._journal_up = True
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    # -- the API called from the event loop (or any thread) -----------------------------------

    def request(self, rec: RequestAudit) -> None:
        """Record one inference request; prompt/response only when the config says so."""
        cfg = self._cfg
        if cfg.enabled:
            values = rec.values(with_prompt=cfg.log_requests, with_response=cfg.log_responses)
            self._q.put(_Event(_REQUEST, values, time.time(), request_priority(rec.status)))

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
        """Apply a reloaded config: ``enabled``, ``log_requests`` and ``log_responses`` are live."""
        self._cfg = cfg

    @property
    def last_seq(self) -> int:
        return self._state.seq

    def _named(self, kind: str, allowed: frozenset[str], priority: int | None,
               fields: Mapping[str, FieldValue]) -> None:
        if kind not in allowed:
            raise ValueError(f"unknown audit event {kind!r}; expected one of {', '.join(sorted(allowed))}")
        record.check_fields(fields)
        event = EVENTS[kind]
        self._emit(event, dict(fields), event.priority if priority is None else priority)

    def _emit(self, event: EventType, values: Mapping[str, FieldValue], priority: int) -> None:
        if self._cfg.enabled:
            self._q.put(_Event(event, values, time.time(), priority))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the key and the chain position, re-send an interrupted batch, start the thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._prepare)
        self._thread.start()

    async def flush(self) -> None:
        """Wait until every event emitted so far has been written."""
        if not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._q.put(_Flush(lambda: loop.call_soon_threadsafe(_resolve, done)))
        await done

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write everything queued, then stop the thread and close the files."""
        if not self._thread.is_alive():
            if not self._q.empty():
                ERRORS.inc(self._q.qsize())
                log.error("%d audit records were not written: the audit log did not start", self._q.qsize())
            return
        self._q.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        if self._thread.is_alive():  # stuck in journal.send: journald does not read its socket
            left = 0
            while not self._q.empty():
                left += isinstance(self._q.get_nowait(), _Event)
            ERRORS.inc(left)
            pending = self._state.pending
            log.error("the audit writer did not finish within %.0f s (is journald accepting records?): "
                      "%d queued audit records were not written; the %d records in flight stay in %s "
                      "and are re-sent at the next start", timeout, left, len(pending), self._state_file.path)

    # -- the writer thread ------------------------------------------------------------------

    def _prepare(self) -> None:
        self._key = chainkey.load_or_create(self._cfg, str(self._state_file.path.parent))
        kid = key_id(self._key)
        state = self._state_file.load()
        if state.pending:
            first, last = state.pending[0].get(record.SEQ), state.pending[-1].get(record.SEQ)
            log.warning("re-sending %d audit records (seq %s..%s) of a batch interrupted by a crash",
                        len(state.pending), first, last)
            self._deliver(state.pending)
        if state.key_id != kid:
            if state.key_id:
                log.warning("the audit chain key changed: a new chain starts at seq 1 "
                            "(verify older records with the old key)")
            state = ChainState(key_id=kid)
        self._state = replace(state, pending=())
        self._save(durable=True)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._q.get()]
            while len(items) < BATCH_MAX:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            events = [i for i in items if isinstance(i, _Event)]
            if events:
                try:
                    self._write(events)
                except Exception:
                    ERRORS.inc(len(events))
                    log.exception("the audit writer failed on a batch of %d records", len(events))
            for item in items:
                if isinstance(item, _Flush):
                    item.done()
                elif item is _STOP:
                    stopping = True
        self._journal.close()
        self._fallback.close()
        if self._file is not None:
            self._file.close()

    def _write(self, events: Sequence[_Event]) -> None:
        # Each record is rendered to JSON once: that text is the chain's canonical form (every
        # field build() returns is covered), the JSONL line (with SECURELLM_CHAIN appended) and
        # the record's entry in the state file's pending batch.
        key, seq, chain = self._key, self._state.seq, self._state.chain
        build = record.build
        records: list[dict[str, str]] = []
        lines: list[str] = []
        for e in events:
            seq += 1
            fields = build(e.event, e.values, seq=seq, when=e.when, priority=e.priority)
            text = canonical_text(fields)
            chain = link_canonical(key, chain, text.encode("utf-8"))
            fields[CHAIN] = chain
            records.append(fields)
            lines.append(f'{text[:-1]},"{CHAIN}":"{chain}"}}')
        self._state = replace(self._state, seq=seq, chain=chain, pending=tuple(records))
        self._save(durable=True, pending_json=f"[{','.join(lines)}]")
        self._deliver(records, lines)
        self._state = replace(self._state, pending=())
        self._save(durable=False)

    def _save(self, *, durable: bool, pending_json: str | None = None) -> None:
        try:
            self._state_file.save(self._state, durable=durable, pending_json=pending_json)
        except OSError as exc:
            ERRORS.inc()
            log.error("cannot save the audit chain position to %s: %s", self._state_file.path, exc.strerror)

    def _deliver(self, records: Sequence[Mapping[str, str]], lines: Sequence[str] | None = None) -> None:
        """Send ``records`` to journald, and to the file (all, or those journald did not take);
        ``lines`` are their JSONL lines when already rendered."""
        if lines is None:
            lines = [to_line(fields)[:-1] for fields in records]
        missed: list[int] = []
        journal_ok = True
        sent = 0
        for i, fields in enumerate(records):
            if journal_ok:
                try:
                    self._journal.write(fields)
                    sent += 1
                    if not self._journal_up:
                        self._journal_changed(True, "")
                    continue
                except JournalUnavailable as exc:
                    journal_ok = self._journal_changed(False, str(exc))
                except OSError as exc:
                    ERRORS.inc()
                    log.error("journald did not take audit record seq %s: %s", fields.get(record.SEQ), exc)
            missed.append(i)
        if sent:
            _JOURNAL_RECORDS.inc(sent)
        if self._file is not None:
            self._to_file(self._file, records, lines, [records[i] for i in missed])
        elif missed:
            self._to_file(self._fallback, [records[i] for i in missed], [lines[i] for i in missed],
                          [records[i] for i in missed])

    def _to_file(self, sink: FileSink, records: Sequence[Mapping[str, str]], lines: Sequence[str],
                 missed: Sequence[Mapping[str, str]]) -> None:
        try:
            sink.write_lines(lines)
        except OSError as exc:
            ERRORS.inc(len(records))
            if missed:
                log.critical("%d audit records (seq %s..%s) could not be written to journald nor to %s: %s",
                             len(missed), missed[0].get(record.SEQ), missed[-1].get(record.SEQ), sink.path, exc)
            else:
                log.error("cannot write audit records to %s: %s", sink.path, exc)
            return
        _FILE_RECORDS.inc(len(records))
        FALLBACK.inc(len(missed))

    def _journal_changed(self, up: bool, reason: str) -> bool:
        if up != self._journal_up:
            if up:
                log.info("journald is available again; audit records go to the journal")
            else:
                log.warning("journald is unavailable (%s); audit records go to %s", reason, self._fallback.path)
            self._journal_up = up
        return up


def _file_sink(cfg: AuditConfig, path: Path) -> FileSink:
    return FileSink(path, cfg.rotate, cfg.rotate_max_bytes, cfg.retention_days)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

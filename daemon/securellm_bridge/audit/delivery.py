"""Numbering, chaining and delivering records: the work of the audit writer process.

Each batch is numbered and chained, the chain position is saved ahead of delivery together
with the batch (``state.py``, fsync), then every record goes to journald; a record that
journald cannot take (no socket, stale socket, error, timeout) goes to the JSONL file:
``[security.audit] file`` when set (which receives every record anyway), else
``audit-fallback.jsonl`` in the state dir. Nothing is dropped without an error log and a
count in ``Counts.errors``, which the process reports to the daemon for
``securellm_audit_errors_total``. Runs in the writer process only: no Prometheus here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from ..config.security import AuditConfig
from . import chainkey, record
from .chain import canonical_text, key_id, link_canonical
from .events import EVENTS
from .journald import JournalSink, JournalUnavailable
from .pipe import Record
from .record import CHAIN
from .request_record import render_request
from .sinks import FileSink, to_line
from .state import ChainState, StateFile

log = logging.getLogger(__name__)

FALLBACK_FILE = "audit-fallback.jsonl"


@dataclass
class Counts:
    """What happened since the last report to the daemon (the Prometheus counters' deltas)."""

    journal: int = 0
    file: int = 0
    fallback: int = 0
    errors: int = 0

    def take(self) -> tuple[int, int, int, int]:
        out = (self.journal, self.file, self.fallback, self.errors)
        self.journal = self.file = self.fallback = self.errors = 0
        return out


class Delivery:
    """The chain position and the sinks. ``prepare()`` first, then ``write()`` batches."""

    def __init__(self, cfg: AuditConfig, state_dir: str) -> None:
        self._cfg = cfg
        self._state_dir = state_dir
        self._state_file = StateFile(state_dir)
        self._state = ChainState()
        self._key = b""
        self._journal = JournalSink()
        self._file = _file_sink(cfg, Path(cfg.file)) if cfg.file else None
        self._fallback = self._file or _file_sink(cfg, Path(state_dir) / FALLBACK_FILE)
        self._journal_up = True
        self.counts = Counts()

    @property
    def seq(self) -> int:
        """The last sequence number handed out."""
        return self._state.seq

    def prepare(self) -> None:
        """Load the key and the chain position; re-send a batch interrupted by a crash.

        Raises StateError when the key or the state file is unusable.
        """
        self._key = chainkey.load_or_create(self._cfg, self._state_dir)
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

    def write(self, batch: Sequence[Record]) -> None:
        """Number, chain, save ahead and deliver one batch."""
        # Each record is rendered to JSON once: that text is the chain's canonical form (every
        # field build() returns is covered), the JSONL line (with SECURELLM_CHAIN appended) and
        # the record's entry in the state file's pending batch.
        key, seq, chain = self._key, self._state.seq, self._state.chain
        build, events = record.build, EVENTS
        records: list[dict[str, str]] = []
        lines: list[str] = []
        for name, values, when, priority in batch:
            seq += 1
            if name == "request":  # most records: rendered from a plan made once
                fields, text = render_request(values, seq=seq, when=when, priority=priority)
            else:
                fields = build(events[name], values, seq=seq, when=when, priority=priority)
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

    def close(self) -> None:
        self._journal.close()
        self._fallback.close()
        if self._file is not None:
            self._file.close()

    def _save(self, *, durable: bool, pending_json: str | None = None) -> None:
        try:
            self._state_file.save(self._state, durable=durable, pending_json=pending_json)
        except OSError as exc:
            self.counts.errors += 1
            log.error("cannot save the audit chain position to %s: %s", self._state_file.path, exc.strerror)

    def _deliver(self, records: Sequence[Mapping[str, str]], lines: Sequence[str] | None = None) -> None:
        """Send ``records`` to journald, and to the file (all, or those journald did not take);
        ``lines`` are their JSONL lines when already rendered."""
        if lines is None:
            lines = [to_line(fields) for fields in records]
        missed: list[int] = []
        journal_ok = True
        for i, fields in enumerate(records):
            if journal_ok:
                try:
                    self._journal.write(fields)
                    self.counts.journal += 1
                    if not self._journal_up:
                        self._journal_changed(True, "")
                    continue
                except JournalUnavailable as exc:
                    journal_ok = self._journal_changed(False, str(exc))
                except OSError as exc:
                    self.counts.errors += 1
                    log.error("journald did not take audit record seq %s: %s", fields.get(record.SEQ), exc)
            missed.append(i)
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
            self.counts.errors += len(records)
            if missed:
                log.critical("%d audit records (seq %s..%s) could not be written to journald nor to %s: %s",
                             len(missed), missed[0].get(record.SEQ), missed[-1].get(record.SEQ), sink.path, exc)
            else:
                log.error("cannot write audit records to %s: %s", sink.path, exc)
            return
        self.counts.file += len(records)
        self.counts.fallback += len(missed)

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

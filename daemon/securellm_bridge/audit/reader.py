"""Reading the trail back: from the journal (``systemd.journal.Reader``) or from JSONL files.

Every function here blocks (journal files, disk); call it from a worker thread, never from
the event loop. Entries carry the record's own fields exactly as they were chained (the
covered fields and ``SECURELLM_CHAIN``), so the same entries serve queries and verification.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from systemd import journal

from .chain import covered
from .record import CHAIN, EVENT, IDENTIFIER, PREFIX, SEQ, TIME, parse_timestamp
from .sinks import file_set

#: Reader converters that keep the values as the strings that were chained.
_RAW = {"MESSAGE_ID": bytes.decode, "PRIORITY": bytes.decode, "__REALTIME_TIMESTAMP": int}


@dataclass(frozen=True)
class Entry:
    """One record as read back, with where it was found (``file:line`` or a journal cursor)."""

    fields: Mapping[str, str]
    #: Seconds since the epoch: journald's receive time, or the record's own time in a file.
    time: float
    where: str
    cursor: str = ""

    @property
    def seq(self) -> int | None:
        text = self.fields.get(SEQ, "")
        return int(text) if text.isdigit() else None

    @property
    def chain(self) -> str:
        return self.fields.get(CHAIN, "")

    @property
    def event(self) -> str:
        return self.fields.get(EVENT, "")


@dataclass(frozen=True)
class Filter:
    """Which records: a time window and exact matches on ``SECURELLM_*`` fields."""

    since: float | None = None
    until: float | None = None
    #: lowercase field name (``event``, ``key_id``, ``provider``, ``model``, ``status``) -> value
    match: Mapping[str, str] = field(default_factory=dict)

    def journal_matches(self) -> dict[str, str]:
        return {PREFIX + k.upper(): v for k, v in self.match.items() if v}

    def accepts(self, entry: Entry) -> bool:
        if self.since is not None and entry.time < self.since:
            return False
        if self.until is not None and entry.time >= self.until:
            return False
        return all(entry.fields.get(k) == v for k, v in self.journal_matches().items())


def _ours(raw: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, list):  # a field given twice: never written by us; keep it visibly wrong
            v = "\x00".join(x if isinstance(x, str) else repr(x) for x in v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v if isinstance(v, str) else str(v)
    kept = covered(out)
    if CHAIN in out:
        kept[CHAIN] = out[CHAIN]
    return kept


class JournalSource:
    """Records with ``SYSLOG_IDENTIFIER=securellm-bridge`` in the local journal or a directory."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory

    @property
    def name(self) -> str:
        return f"journal {self.directory}" if self.directory else "the system journal"

    def _open(self, flt: Filter) -> journal.Reader:
        reader = journal.Reader(path=self.directory, converters=_RAW)
        reader.data_threshold = 0  # whole fields, however long (prompts may be large)
        reader.add_match(SYSLOG_IDENTIFIER=IDENTIFIER, **flt.journal_matches())
        return reader

    @staticmethod
    def _entry(raw: Mapping[str, Any]) -> Entry:
        cursor = str(raw.get("__CURSOR", ""))
        return Entry(_ours(raw), int(raw["__REALTIME_TIMESTAMP"]) / 1e6, f"journal cursor {cursor}", cursor)

    def entries(self, flt: Filter) -> Iterator[Entry]:
        """Matching records in journal order, from ``since`` up to ``until``."""
        with self._open(flt) as reader:
            if flt.since is not None:
                reader.seek_realtime(flt.since)
            for raw in reader:
                entry = self._entry(raw)
                if flt.until is not None and entry.time >= flt.until:
                    return
                yield entry

    def anchor(self, since: float) -> Entry | None:
        """The last record before ``since``: the chain value that the window continues."""
        with self._open(Filter()) as reader:
            reader.seek_realtime(since)
            raw = reader.get_previous()
            return self._entry(raw) if raw else None

    def newest(self, flt: Filter, limit: int) -> list[Entry]:
        """The newest ``limit`` matching records, oldest first (like ``journalctl -n``)."""
        out: list[Entry] = []
        with self._open(flt) as reader:
            if flt.until is not None:
                reader.seek_realtime(flt.until)
            else:
                reader.seek_tail()
            while len(out) < limit:
                raw = reader.get_previous()
                if not raw:
                    break
                entry = self._entry(raw)
                if flt.until is not None and entry.time >= flt.until:
                    continue
                if flt.since is not None and entry.time < flt.since:
                    break
                out.append(entry)
        out.reverse()
        return out

    def follow(self, flt: Filter, backlog: int, stop: threading.Event, poll_s: float = 0.5) -> Iterator[Entry]:
        """The newest ``backlog`` records, then every new one until ``stop`` is set."""
        with self._open(flt) as reader:
            reader.seek_tail()
            recent: list[Entry] = []
            raw = reader.get_previous()
            newest = raw.get("__CURSOR") if raw else None
            while raw and len(recent) < backlog:
                recent.append(self._entry(raw))
                raw = reader.get_previous()
            yield from reversed(recent)
            if newest is not None:
                reader.seek_cursor(newest)
                reader.get_next()
            while not stop.is_set():
                raw = reader.get_next()
                if raw:
                    yield self._entry(raw)
                else:
                    reader.wait(poll_s)


class FileSource:
    """Records in JSONL files; a sink's path also brings in its rotated files, oldest first."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths: list[Path] = []
        for p in paths:
            self.paths.extend(x for x in (file_set(p) or [p]) if x not in self.paths)

    @property
    def name(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def _all(self) -> Iterator[Entry]:
        for path in self.paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    yield _parse_line(line, f"{path}:{n}")

    def entries(self, flt: Filter) -> Iterator[Entry]:
        return (e for e in self._all() if flt.accepts(e))

    def anchor(self, since: float) -> Entry | None:
        last = None
        for e in self._all():
            if e.time >= since:
                break
            last = e
        return last


def _parse_line(line: str, where: str) -> Entry:
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and all(isinstance(v, str) for v in data.values())):
        return Entry({}, 0.0, where)
    fields = _ours(data)
    try:
        when = parse_timestamp(fields.get(TIME, ""))
    except ValueError:
        when = 0.0
    return Entry(fields, when, where)

"""The JSONL file sink, with rotation by day or size and retention; used by the writer process only."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path
from typing import Literal, Mapping, Sequence

from .pipe import write_all

DAY_S = 86400
_STAMP_RE = re.compile(r"^\.\d{8}T\d{12}Z$")


def to_line(fields: Mapping[str, str]) -> str:
    """A record as its JSONL line, without the newline (``write_lines`` adds it)."""
    return json.dumps(dict(fields), ensure_ascii=False, separators=(",", ":"))


def rotated_files(path: Path) -> list[Path]:
    """The rotated siblings of a JSONL sink, oldest first (their names sort by time)."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    prefix = path.name
    return sorted(path.parent / n for n in names
                  if n.startswith(prefix) and _STAMP_RE.match(n[len(prefix):]))


def file_set(path: Path) -> list[Path]:
    """A sink's whole trail in order: rotated files, then the current one (when present)."""
    return rotated_files(path) + ([path] if path.exists() else [])


class FileSink:
    """Appends JSONL records to ``path`` (mode 0600) and rotates it by day (UTC) or size."""

    def __init__(self, path: Path, rotate: Literal["daily", "size"] = "daily",
                 max_bytes: int = 100 * 1024 * 1024, retention_days: int = 30) -> None:
        self.path = path
        self.rotate = rotate
        self.max_bytes = max_bytes
        self.retention_days = retention_days
        self._fd: int | None = None
        self._size = 0
        self._day = ""
        #: (day, its first second, the next day's first second), UTC, to check rotation cheaply.
        self._day_span: tuple[str, float, float] = ("", 0.0, 0.0)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            st = os.fstat(self._fd)
            self._size = st.st_size
            self._day = _day(st.st_mtime) if st.st_size else _day(time.time())
            self._expire()
        return self._fd

    def write_lines(self, lines: Sequence[str]) -> None:
        """Append records rendered as JSON objects (``to_line``): one ``write`` per batch unless
        a rotation falls inside it."""
        self._open()
        pending: list[bytes] = []
        pending_size = 0
        for line in lines:
            data = (line + "\n").encode("utf-8")
            if self._due(self._size + pending_size, len(data)):
                self._flush(pending)
                pending, pending_size = [], 0
                self._rotate()
            pending.append(data)
            pending_size += len(data)
        self._flush(pending)

    def _due(self, current: int, incoming: int) -> bool:
        if current == 0:
            return False
        if self.rotate == "daily":
            now = time.time()
            if self._day_span[0] == self._day and self._day_span[1] <= now < self._day_span[2]:
                return False  # still within the file's day: no strftime per record
            today = _day(now)
            start = dt.datetime.strptime(today, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp()
            self._day_span = (today, start, start + DAY_S)
            return self._day != today
        return current + incoming > self.max_bytes

    def _flush(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        data = b"".join(chunks)
        write_all(self._open(), data)
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{stamp}"))
        self._open()

    def _expire(self) -> None:
        if self.retention_days <= 0:
            return
        cutoff = time.time() - self.retention_days * DAY_S
        for old in rotated_files(self.path):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:
                continue

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _day(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")

"""A child's stdout and stderr, read off the pipes line by line and logged.

Lines are bounded (``max_line`` bytes; the rest of a longer line is dropped), decoded as
UTF-8 with replacement, stripped of terminal escape sequences and control characters, then
handed to a backend's :data:`Parser` for a log level and redaction. Each line is logged with
``SECURELLM_MODEL``, ``SECURELLM_BACKEND``, ``SECURELLM_PID`` and ``SECURELLM_STREAM``
fields (journald keeps them as fields under systemd), kept in a short tail for error
messages and passed to subscribers. Reading happens in two tasks on the loop; nothing blocks.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: ``(line) -> (log level, text to log)``; the text must carry no secret.
Parser = Callable[[str], tuple[int, str]]
MAX_LINE = 4096
TAIL_LINES = 50
_CHUNK = 65536
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def plain(line: str) -> tuple[int, str]:
    """The default parser: everything at INFO, unchanged."""
    return logging.INFO, line


def clean(raw: bytes) -> str:
    """``raw`` as text fit for a log: no escape sequences, no control characters but tabs."""
    return _ESCAPES.sub("", raw.decode("utf-8", errors="replace")).rstrip()


@dataclass(frozen=True, slots=True)
class OutputLine:
    stream: str  # "stdout" | "stderr"
    level: int
    text: str


class OutputReader:
    """Reads the pipes of one process at a time (:meth:`attach` again for the next one)."""

    def __init__(self, name: str, program: str, logger: logging.Logger, parse: Parser, *,
                 max_line: int = MAX_LINE, tail_lines: int = TAIL_LINES) -> None:
        self._name = name
        self._program = program
        self._log = logger
        self._parse = parse
        self._max_line = max_line
        self.tail: deque[OutputLine] = deque(maxlen=tail_lines)
        self._subscribers: list[Callable[[OutputLine], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, callback: Callable[[OutputLine], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def reset(self) -> None:
        """Forget the previous process's tail."""
        self.tail.clear()

    def attach(self, pid: int, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self._tasks = [asyncio.create_task(self._pump(pid, "stdout", stdout)),
                       asyncio.create_task(self._pump(pid, "stderr", stderr))]

    async def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the pipes to close (a grandchild may hold them open)."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _pump(self, pid: int, stream: str, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        dropping = False  # inside the remainder of an over-long line
        while chunk := await reader.read(_CHUNK):
            buf += chunk
            while (end := buf.find(b"\n")) >= 0:
                line = bytes(buf[:end])
                del buf[:end + 1]
                if dropping:
                    dropping = False
                else:
                    self._emit(pid, stream, line)
            if len(buf) > self._max_line:
                if not dropping:
                    self._emit(pid, stream, bytes(buf))
                dropping = True
                buf.clear()
        if buf and not dropping:
            self._emit(pid, stream, bytes(buf))

    def _emit(self, pid: int, stream: str, raw: bytes) -> None:
        truncated = len(raw) > self._max_line
        text = clean(raw[:self._max_line]) + (" [truncated]" if truncated else "")
        if not text:
            return
        level, text = self._parse(text)
        line = OutputLine(stream, level, text)
        self.tail.append(line)
        self._log.log(level, "%s", text, extra={
            "SECURELLM_MODEL": self._name, "SECURELLM_BACKEND": self._program,
            "SECURELLM_PID": pid, "SECURELLM_STREAM": stream})
        for callback in list(self._subscribers):
            try:
                callback(line)
            except Exception:
                self._log.exception("output subscriber of %s failed", self._name)

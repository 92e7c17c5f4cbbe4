"""Logging: to journald with structured fields under systemd, else to stderr.

Records pass through a queue to a listener thread, so a slow or stuck journald can never
block the event loop. Structured fields are given as ``extra={"SECURELLM_FOO": value}``;
journald stores them as fields, the stderr format appends them as ``key=value``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys

from .audit.journald import JournalSink, JournalUnavailable

IDENTIFIER = "securellm-bridged"
_listener: logging.handlers.QueueListener | None = None


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets ``JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _StderrFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = [f"{k[10:].lower()}={v}" for k, v in record.__dict__.items() if k.startswith("SECURELLM_")]
        return f"{base} [{' '.join(fields)}]" if fields else base


_PRIORITY = {logging.CRITICAL: "2", logging.ERROR: "3", logging.WARNING: "4", logging.INFO: "6",
             logging.DEBUG: "7"}


class _JournalHandler(logging.Handler):
    """Native journal protocol with a send timeout (systemd-python's ``send`` blocks holding
    the GIL when journald stops reading, which would freeze the whole daemon). A record that
    journald does not take goes to stderr instead of being lost."""

    def __init__(self) -> None:
        super().__init__()
        self._sink = JournalSink()
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(_StderrFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        fields = {"MESSAGE": self.format(record), "PRIORITY": _PRIORITY.get(record.levelno, "6"),
                  "SYSLOG_IDENTIFIER": IDENTIFIER, "LOGGER": record.name, "CODE_FILE": record.pathname,
                  "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName}
        fields.update((k, str(v)) for k, v in record.__dict__.items() if k.startswith("SECURELLM_"))
        try:
            self._sink.write(fields)
        except (JournalUnavailable, OSError):
            self._fallback.emit(record)


def _sink() -> logging.Handler:
    if under_journald():
        return _JournalHandler()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter())
    return handler


APP_LOGGER = "securellm_bridge"


def setup(level: str) -> None:
    """Install the queue handler on the root logger (idempotent).

    ``[log] level`` applies to the daemon's own loggers; libraries log warnings and up.
    """
    global _listener
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    set_level(level)
    if _listener is not None:
        return
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    _listener = logging.handlers.QueueListener(q, _sink(), respect_handler_level=False)
    _listener.start()


def set_level(level: str) -> None:
    logging.getLogger(APP_LOGGER).setLevel(level.upper())


def shutdown() -> None:
    """Flush queued records and stop the listener thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None

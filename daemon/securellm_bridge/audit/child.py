"""The audit writer process: ``python -m securellm_bridge.audit.child``, started by ``AuditLog``.

Building, chaining and delivering records costs the daemon's CPU per request; done in a
thread it competed with the event loop for the GIL. Here it runs in a process of its own,
fed over a pipe (``pipe.py`` has the messages). It imports only the audit modules and the
config dataclasses (no aiohttp, grpc, Prometheus), so it stays small.

It ignores SIGINT and SIGTERM: systemd's stop signals every process of the service, and the
daemon drives the shutdown by closing the pipe. At EOF on stdin (the daemon closed it, or
died) it writes what it has and exits 0, so it never outlives the daemon for long.
Its logs go where the daemon's go (``logs.setup``: the journal under systemd, else stderr).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from typing import Any, Sequence

from .. import logs
from ..config.secrets import Secret
from ..config.security import AuditConfig
from ..errors import StateError
from .delivery import Delivery
from .pipe import ACK, FAILED, INIT, READY, RECORDS, Frames, Record, Settings, frame, write_all

log = logging.getLogger(__name__)

BATCH_MAX = 512
#: How long a batch waits for more records before it is written.
LINGER_S = 0.05
_READ_SIZE = 1 << 20


class Inbox:
    """Messages from the daemon, read from a blocking fd; as many as are there at once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = Frames()

    def read(self) -> list[tuple[Any, ...]] | None:
        """At least one message, or None at EOF."""
        while True:
            data = os.read(self._fd, _READ_SIZE)
            if not data:
                if self._frames.partial:
                    log.error("the daemon's audit pipe ended inside a message; that message is lost")
                return None
            messages = self._frames.feed(data)
            if messages:
                return messages

    def ready(self, timeout: float) -> bool:
        """Whether more input is there within ``timeout`` seconds."""
        return timeout > 0 and bool(select.select([self._fd], [], [], timeout)[0])


class Outbox:
    """Messages to the daemon. When it is gone the writer goes on to write what it has."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._open = True

    def send(self, message: tuple[Any, ...]) -> None:
        if self._open:
            try:
                write_all(self._fd, frame(message))
            except BrokenPipeError:
                self._open = False


def _config(settings: Settings) -> AuditConfig:
    key = settings["chain_key"]
    return AuditConfig(file=settings["file"], rotate=settings["rotate"],  # type: ignore[arg-type]
                       rotate_max_bytes=settings["rotate_max_bytes"], retention_days=settings["retention_days"],
                       chain_key=Secret(key) if key is not None else None)


def _serve(delivery: Delivery, inbox: Inbox, outbox: Outbox, messages: list[tuple[Any, ...]] | None) -> None:
    """Write and acknowledge batches until EOF; ``messages`` are those already read.

    A batch waits up to ``LINGER_S`` for more records (up to ``BATCH_MAX``): each batch costs
    two saves of the chain state, one with fsync (~0.6 ms). Measured at ~1,700 records/s
    (the daemon sends every 5 ms): ~150 µs of the writer's CPU a record without waiting,
    ~105 µs with 50 ms. Waiting adds no risk: if the daemon dies the writer still writes
    these records, and if the writer dies the daemon re-sends them (it has no ACK yet).
    """
    while messages is not None:
        batch: list[Record] = []
        first = _collect(messages, batch, None)
        deadline = time.monotonic() + LINGER_S
        while len(batch) < BATCH_MAX and inbox.ready(deadline - time.monotonic()):
            messages = inbox.read()
            if messages is None:
                break
            first = _collect(messages, batch, first)
        for start in range(0, len(batch), BATCH_MAX):
            chunk = batch[start:start + BATCH_MAX]
            _write(delivery, chunk)
            outbox.send((ACK, (first or 0) + start + len(chunk) - 1, delivery.seq, *delivery.counts.take()))
        if messages is not None:
            messages = inbox.read()


def _collect(messages: list[tuple[Any, ...]], batch: list[Record], first: int | None) -> int | None:
    """Add the records of ``messages`` to ``batch``; returns the id of the batch's first record."""
    for message in messages:
        if message[0] != RECORDS:
            log.error("unexpected message %r from the daemon on the audit pipe; ignored", message[0])
            continue
        if first is None:
            first = message[1]
        batch.extend(message[2])
    return first


def _write(delivery: Delivery, chunk: Sequence[Record]) -> None:
    try:
        delivery.write(chunk)
    except Exception:
        delivery.counts.errors += len(chunk)
        log.exception("the audit writer failed on a batch of %d records", len(chunk))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Messages go back on a private copy of stdout; fd 1 becomes stderr, so that a stray
    # print cannot corrupt the pipe.
    outbox = Outbox(os.dup(1))
    os.dup2(2, 1)
    inbox = Inbox(0)
    first = inbox.read()
    if not first or first[0][0] != INIT:
        print("securellm_bridge.audit.child: no INIT message on stdin (it is started by the daemon)",
              file=sys.stderr)
        return 2
    settings: Settings = first[0][1]
    logs.setup(settings["log_level"])
    try:
        delivery = Delivery(_config(settings), settings["state_dir"])
        try:
            delivery.prepare()
        except StateError as exc:
            outbox.send((FAILED, str(exc)))
            return 1
        outbox.send((READY, delivery.seq))
        _serve(delivery, inbox, outbox, first[1:])
        delivery.close()
        return 0
    finally:
        logs.shutdown()


if __name__ == "__main__":
    sys.exit(main())

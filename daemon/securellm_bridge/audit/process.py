"""One audit writer process as the daemon's event loop sees it: its pipes and its end.

``loop.subprocess_exec`` gives the pipes as asyncio transports: writes to the writer's stdin
never block the loop (a full pipe buffers in the transport), and its messages back arrive
as callbacks. asyncio may report the exit before the last data on stdout, so the process
counts as finished only once both have happened: the last ACKs are never missed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, cast

from .pipe import ACK, FAILED, READY, Frames

CHILD_MODULE = "securellm_bridge.audit.child"


class WriterProcess(asyncio.SubprocessProtocol):
    """``started`` resolves with None on READY, else with why it did not start (and whether the
    writer refused: a ``StateError``); ``finished`` once it exited and its stdout closed."""

    def __init__(self, on_ack: Callable[[WriterProcess, tuple[Any, ...]], None],
                 on_finished: Callable[[WriterProcess], None]) -> None:
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[tuple[str, bool] | None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.last_seq = 0
        self._on_ack = on_ack
        self._on_finished = on_finished
        self._frames = Frames()
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._exited = self._out_closed = False

    @classmethod
    async def spawn(cls, on_ack: Callable[[WriterProcess, tuple[Any, ...]], None],
                    on_finished: Callable[[WriterProcess], None]) -> WriterProcess:
        """Start ``python -m securellm_bridge.audit.child``; raises OSError when it cannot be."""
        loop = asyncio.get_running_loop()
        _, proc = await loop.subprocess_exec(lambda: cls(on_ack, on_finished), sys.executable, "-m", CHILD_MODULE,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                             env=child_env())
        return proc

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes: no isinstance checks.
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self._transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        for message in self._frames.feed(cast(bytes, data)):
            tag = message[0]
            if tag == ACK:
                self._on_ack(self, message)
            elif tag == READY:
                self.last_seq = message[1]
                _resolve(self.started, None)
            elif tag == FAILED:
                _resolve(self.started, (message[1], True))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._out_closed = True
            self._check_finished()

    def process_exited(self) -> None:
        self._exited = True
        self._check_finished()

    def _check_finished(self) -> None:
        if self._exited and self._out_closed and not self.finished.done():
            _resolve(self.started, (f"it {self.exit_status}", False))
            self.finished.set_result(None)
            self._on_finished(self)

    # -- the daemon's side ------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    @property
    def exit_status(self) -> str:
        code = self._transport.get_returncode() if self._transport is not None else None
        if code is None:
            return "is running"
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"

    @property
    def writable(self) -> bool:
        return self._stdin is not None and not self._stdin.is_closing() and not self.finished.done()

    def send(self, data: bytes) -> None:
        """Queue ``data`` on the writer's stdin (never blocks; a no-op once it is gone)."""
        if self.writable:
            self._stdin.write(data)  # type: ignore[union-attr]

    def backlog(self) -> int:
        """Bytes queued in the daemon for the writer's stdin (the pipe was full)."""
        return self._stdin.get_write_buffer_size() if self._stdin is not None else 0

    def close_input(self) -> None:
        """EOF to the writer, once what is queued is written: it writes the rest and exits 0."""
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()

    def kill(self) -> None:
        if self._transport is not None and self._transport.get_returncode() is None:
            try:
                self._transport.kill()
            except ProcessLookupError:
                pass

    def dispose(self) -> None:
        """Release the transports (kills the process if it still runs)."""
        if self._transport is not None:
            self._transport.close()


def child_env() -> dict[str, str]:
    """The daemon's environment, with this package's root first on PYTHONPATH: the writer
    imports the same code from a checkout (PYTHONPATH=daemon, any cwd) or from a wheel."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + os.pathsep + path if path else root
    return env


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)

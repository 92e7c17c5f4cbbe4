"""One SQLite connection owned by one worker thread.

Callers on the event loop ``await db.call(fn, *args)``; ``fn(conn, *args)`` runs in the
worker thread, so no database I/O ever happens on the loop. The database is in WAL mode and
migrated to the latest schema version on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import StateError
from .migrations import MIGRATIONS

T = TypeVar("T")

DB_FILENAME = "securellm.db"


def _open(path: Path) -> sqlite3.Connection:
    old = os.umask(0o077)  # the db, -wal and -shm files are private to the daemon
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    finally:
        os.umask(old)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    _migrate(conn)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, kind: str = "") -> Iterator[None]:
    """``BEGIN [kind]`` ... ``COMMIT``, or ``ROLLBACK`` and re-raise (the connection is in
    autocommit mode, so every multi-statement write says where its transaction ends)."""
    conn.execute(f"BEGIN {kind}".rstrip())
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise StateError(
            f"database schema version {version} is newer than this daemon knows ({len(MIGRATIONS)})")
    for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn, "IMMEDIATE"):
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; our own migrations have no ';' in literals.
    return [s.strip() for s in script.split(";") if s.strip()]


class Database:
    """The daemon's state database. Create with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._conn = conn

    @classmethod
    async def open(cls, state_dir: str) -> "Database":
        directory = Path(state_dir)
        path = directory / DB_FILENAME
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _prepare_and_open, directory, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, conn)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn, *args)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


def _prepare_and_open(directory: Path, path: Path) -> sqlite3.Connection:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _open(path)
    except (OSError, sqlite3.Error) as exc:
        raise StateError(f"cannot open state database {path}: {exc}") from None

"""The SQLite state store: WAL, migrations, off-loop access."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from securellm_bridge.errors import StateError
from securellm_bridge.security.keys import KeyService, hash_key
from securellm_bridge.store import Database
from securellm_bridge.store.migrations import MIGRATIONS


def test_open_migrates_wal_and_private_files(tmp_path: Path) -> None:
    async def go() -> tuple[str, int, str]:
        db = await Database.open(str(tmp_path / "state"))
        mode = await db.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        version = await db.call(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        thread = await db.call(lambda c: threading.current_thread().name)
        await db.close()
        return mode, version, thread

    mode, version, thread = asyncio.run(go())
    assert mode == "wal" and version == len(MIGRATIONS)
    assert thread.startswith("sqlite") and thread != threading.main_thread().name
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "securellm.db").stat().st_mode) == 0o600


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    conn = sqlite3.connect(tmp_path / "s" / "securellm.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(StateError, match="newer"):
        asyncio.run(Database.open(str(tmp_path / "s")))


def test_key_service_roundtrip_and_batched_last_used(tmp_path: Path) -> None:
    async def go() -> None:
        db = await Database.open(str(tmp_path))
        keys = KeyService(db)
        await keys.load()
        new = await keys.create("alice", ("m1", "m1", "m2"))
        assert new.record.allowed_models == ("m1", "m2")
        assert new.plaintext not in repr(new)
        assert keys.authenticate(new.plaintext).id == new.record.id
        assert keys.list()[0].last_used_at is not None  # visible before the flush
        stored = await db.call(lambda c: c.execute("SELECT last_used_at FROM api_keys").fetchone()[0])
        assert stored is None  # not yet written: batched
        await keys.flush()
        stored = await db.call(lambda c: c.execute("SELECT key_sha256, last_used_at FROM api_keys").fetchone())
        assert stored[0] == hash_key(new.plaintext) and stored[1] is not None
        await keys.revoke(new.record.id)
        from securellm_bridge.errors import AuthenticationFailed, NotFound
        with pytest.raises(AuthenticationFailed, match="revoked"):
            keys.authenticate(new.plaintext)
        with pytest.raises(AuthenticationFailed):
            keys.authenticate("sk-sllm-wrong")
        with pytest.raises(NotFound):
            await keys.revoke("key_nope")
        # A fresh service sees the same state from the database.
        again = KeyService(db)
        await again.load()
        assert again.list()[0].revoked
        await db.close()

    asyncio.run(go())

"""SQL for the ``api_keys`` table. Every function runs in the database thread."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from .db import transaction


@dataclass(frozen=True)
class KeyRow:
    id: str
    key_sha256: str
    owner: str
    allowed_models: tuple[str, ...]
    created_at: float
    last_used_at: float | None
    revoked: bool
    revoked_at: float | None
    #: Requests and tokens per minute for this key; None: the configured default.
    rpm: int | None = None
    tpm: int | None = None
    #: Spending cap in the price table's currency per ``budget_period``; None: no cap.
    max_budget: float | None = None
    budget_period: str = "month"
    #: "off" | "redact" | "block"; None: the configured ``[security.dlp] mode``.
    dlp_mode: str | None = None
    #: Routing strategy for this key's requests; None: ``[router] default_strategy``.
    strategy: str | None = None

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


_COLUMNS = ("id, key_sha256, owner, allowed_models, created_at, last_used_at, revoked, revoked_at, "
            "rpm, tpm, max_budget, budget_period, dlp_mode, strategy")
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(", ")))


def _row(r: tuple) -> KeyRow:  # type: ignore[type-arg]
    # The columns after ``revoked`` are stored as they are; a new one needs no edit here.
    return KeyRow(*r[:3], tuple(json.loads(r[3])), r[4], r[5], bool(r[6]), *r[7:])


def insert(conn: sqlite3.Connection, row: KeyRow) -> None:
    conn.execute(
        f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
        (row.id, row.key_sha256, row.owner, json.dumps(list(row.allowed_models)), row.created_at,
         row.last_used_at, int(row.revoked), row.revoked_at, row.rpm, row.tpm, row.max_budget,
         row.budget_period, row.dlp_mode, row.strategy),
    )


def all_rows(conn: sqlite3.Connection) -> list[KeyRow]:
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")]


def revoke(conn: sqlite3.Connection, key_id: str, when: float) -> KeyRow | None:
    """Mark a key revoked; returns the updated row, or None when there is no such key."""
    conn.execute("UPDATE api_keys SET revoked = 1, revoked_at = ? WHERE id = ? AND revoked = 0", (when, key_id))
    r = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if r is None else _row(r)


def touch_many(conn: sqlite3.Connection, last_used: dict[str, float]) -> None:
    """Write a batch of last-used timestamps in one transaction."""
    with transaction(conn):
        conn.executemany(
            "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            [(t, key_id) for key_id, t in last_used.items()],
        )

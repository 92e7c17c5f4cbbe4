"""SQL for the ``usage_daily`` table. Every function runs in the database thread.

One row per (UTC day, API key, provider, model) with running totals. Requests made without
an API key are stored under the key id ``''`` and read back as ``None``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from .db import transaction


@dataclass(frozen=True)
class UsageRow:
    day: date
    key_id: str | None
    provider: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


_UPSERT = """
    INSERT INTO usage_daily (day, key_id, provider, model, requests, prompt_tokens, completion_tokens, cost)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, provider, model) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        cost = cost + excluded.cost
"""


def upsert_many(conn: sqlite3.Connection, rows: Sequence[UsageRow]) -> None:
    """Add ``rows`` to the running totals, all in one transaction."""
    with transaction(conn):
        conn.executemany(_UPSERT, [
            (r.day.isoformat(), r.key_id or "", r.provider, r.model, r.requests, r.prompt_tokens,
             r.completion_tokens, r.cost) for r in rows])


def select(conn: sqlite3.Connection, key_id: str | None, since: date | None) -> list[UsageRow]:
    """Rows of one key (every key when None) from ``since`` on (inclusive), oldest first."""
    where, params = _filter(key_id, since)
    cursor = conn.execute(
        "SELECT day, key_id, provider, model, requests, prompt_tokens, completion_tokens, cost "
        f"FROM usage_daily{where} ORDER BY day, key_id, provider, model", params)
    return [UsageRow(date.fromisoformat(r[0]), r[1] or None, r[2], r[3], r[4], r[5], r[6], r[7]) for r in cursor]


def spent(conn: sqlite3.Connection, key_id: str, since: date | None) -> float:
    """Total cost of one key from ``since`` on (inclusive; None: ever)."""
    where, params = _filter(key_id, since)
    (total,) = conn.execute(f"SELECT COALESCE(SUM(cost), 0.0) FROM usage_daily{where}", params).fetchone()
    return float(total)


def _filter(key_id: str | None, since: date | None) -> tuple[str, list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    if key_id is not None:
        clauses.append("key_id = ?")
        params.append(key_id)
    if since is not None:
        clauses.append("day >= ?")
        params.append(since.isoformat())
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

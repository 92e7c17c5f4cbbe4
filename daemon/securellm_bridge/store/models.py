"""SQL for the ``models`` table (the local model registry). Every function runs in the database thread.

One row per GGUF file (``path``), with a name unique across rows. The registry computes the
rows; :func:`apply` writes a scan's changes in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .db import transaction

Status = Literal["ok", "missing", "corrupt"]


@dataclass(frozen=True)
class ModelRow:
    #: None until the row is inserted.
    id: int | None
    name: str
    path: str
    format: str
    #: Size and modification time seen at the last scan (a split model: all shards' sizes
    #: summed, the newest mtime); a file whose pair is unchanged is not parsed again.
    size_bytes: int | None
    mtime_ns: int | None
    architecture: str | None
    layer_count: int | None
    context_length: int | None
    quantization: str | None
    created_at: float
    last_scanned: float
    status: Status
    error: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


_COLUMNS = ("id, name, path, format, size_bytes, mtime_ns, architecture, layer_count, context_length, "
            "quantization, created_at, last_scanned, status, error, metadata")
_SETTERS = ", ".join(f"{c} = ?" for c in _COLUMNS.split(", ")[1:])


def _row(r: tuple) -> ModelRow:  # type: ignore[type-arg]
    return ModelRow(*r[:14], metadata=json.loads(r[14]))


def _values(row: ModelRow) -> tuple[Any, ...]:
    return (row.name, row.path, row.format, row.size_bytes, row.mtime_ns, row.architecture,
            row.layer_count, row.context_length, row.quantization, row.created_at,
            row.last_scanned, row.status, row.error, json.dumps(dict(row.metadata)))


def all_rows(conn: sqlite3.Connection) -> list[ModelRow]:
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM models ORDER BY id")]


def apply(conn: sqlite3.Connection, upserts: Sequence[ModelRow], delete_ids: Sequence[int]) -> list[ModelRow]:
    """Delete ``delete_ids``, update the rows of ``upserts`` that have an id and insert the
    others, in one transaction. Names may move between rows within the batch (the final
    names must be unique). Returns ``upserts`` with the ids of inserted rows filled in.
    """
    with transaction(conn):
        conn.executemany("DELETE FROM models WHERE id = ?", [(i,) for i in delete_ids])
        updates = [r for r in upserts if r.id is not None]
        # Park the names being rewritten on placeholders (a NUL cannot start a real name),
        # so that two rows may swap names without tripping UNIQUE half-way.
        conn.executemany("UPDATE models SET name = char(0) || id WHERE id = ?", [(r.id,) for r in updates])
        conn.executemany(f"UPDATE models SET {_SETTERS} WHERE id = ?", [(*_values(r), r.id) for r in updates])
        out: list[ModelRow] = []
        for row in upserts:
            if row.id is None:
                cursor = conn.execute(f"INSERT INTO models ({_COLUMNS}) VALUES (NULL{', ?' * 14})", _values(row))
                row = replace(row, id=cursor.lastrowid)
            out.append(row)
    return out

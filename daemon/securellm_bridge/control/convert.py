"""Small conversions between daemon values and protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from .._pb import keys_pb2
from ..store.keys import KeyRow


def timestamp(epoch: float | None) -> Timestamp | None:
    if epoch is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def api_key(row: KeyRow) -> keys_pb2.ApiKey:
    return keys_pb2.ApiKey(
        id=row.id, owner=row.owner, created_at=timestamp(row.created_at),
        last_used_at=timestamp(row.last_used_at), allowed_models=list(row.allowed_models),
        revoked=row.revoked, revoked_at=timestamp(row.revoked_at), rpm=row.rpm, tpm=row.tpm,
        max_budget=row.max_budget, budget_period=row.budget_period, dlp_mode=row.dlp_mode,
        strategy=row.strategy)

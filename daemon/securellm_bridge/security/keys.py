"""API keys: creation, revocation and lookup by hash.

A key is ``sk-sllm-`` followed by 256 random bits in URL-safe base64. It is shown once, at
creation; only its SHA-256 is stored. Authentication hashes the presented key and looks the
digest up in an in-memory index, so no plaintext comparison ever happens and the request
path never touches the database. ``last_used_at`` is recorded in memory and flushed in
batches by :meth:`KeyService.flush`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace

from ..config.providers import STRATEGIES
from ..errors import AuthenticationFailed, InvalidRequest, NotFound
from ..store import Database
from ..store import keys as sql
from ..store.keys import KeyRow
from .dlp import DLP_MODES

KEY_PREFIX = "sk-sllm-"
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,127}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}$")


BUDGET_PERIODS = ("day", "week", "month", "total")


@dataclass(frozen=True)
class KeyPolicy:
    """Optional per-key limits given at creation."""

    rpm: int | None = None
    tpm: int | None = None
    max_budget: float | None = None
    budget_period: str = "month"
    dlp_mode: str | None = None
    strategy: str | None = None

    def check(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidRequest(f"{name} must be a positive integer", param=name)
        if self.max_budget is not None and self.max_budget < 0:
            raise InvalidRequest("max_budget must not be negative", param="max_budget")
        if self.budget_period not in BUDGET_PERIODS:
            raise InvalidRequest(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}",
                                 param="budget_period")
        if self.dlp_mode is not None and self.dlp_mode not in DLP_MODES:
            raise InvalidRequest(f"dlp_mode must be one of {', '.join(DLP_MODES)}", param="dlp_mode")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise InvalidRequest(f"strategy must be one of {', '.join(STRATEGIES)}", param="strategy")


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: the record and the plaintext, shown to the caller once."""

    record: KeyRow
    plaintext: str

    def __repr__(self) -> str:
        return f"NewKey(record={self.record!r}, plaintext=<redacted>)"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class KeyService:
    """Owns the key index; the database is the source of truth."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_hash: dict[str, KeyRow] = {}
        self._by_id: dict[str, KeyRow] = {}
        self._used: dict[str, float] = {}

    async def load(self) -> None:
        rows = await self._db.call(sql.all_rows)
        self._by_id = {r.id: r for r in rows}
        self._by_hash = {r.key_sha256: r for r in rows}

    async def create(self, owner: str, allowed_models: tuple[str, ...] = (),
                     policy: KeyPolicy = KeyPolicy()) -> NewKey:
        if not _OWNER_RE.match(owner):
            raise InvalidRequest("owner must be 1-128 characters: letters, digits, space, _ . @ -",
                                 param="owner")
        for model in allowed_models:
            if not _MODEL_RE.match(model):
                raise InvalidRequest(f"invalid model name {model!r}", param="allowed_models")
        policy.check()
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = KeyRow(id="key_" + secrets.token_hex(6), key_sha256=hash_key(plaintext), owner=owner,
                     allowed_models=tuple(dict.fromkeys(allowed_models)), created_at=time.time(),
                     last_used_at=None, revoked=False, revoked_at=None, rpm=policy.rpm, tpm=policy.tpm,
                     max_budget=policy.max_budget, budget_period=policy.budget_period,
                     dlp_mode=policy.dlp_mode, strategy=policy.strategy)
        await self._db.call(sql.insert, row)
        self._by_id[row.id] = row
        self._by_hash[row.key_sha256] = row
        return NewKey(row, plaintext)

    async def revoke(self, key_id: str) -> KeyRow:
        row = await self._db.call(sql.revoke, key_id, time.time())
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        self._by_id[row.id] = row
        self._by_hash[row.key_sha256] = row
        return row

    def list(self) -> list[KeyRow]:
        return [self._with_usage(r) for r in sorted(self._by_id.values(), key=lambda r: (r.created_at, r.id))]

    def authenticate(self, presented: str) -> KeyRow:
        """Return the active key for ``presented`` or raise :class:`AuthenticationFailed`."""
        row = self._by_hash.get(hash_key(presented)) if presented.startswith(KEY_PREFIX) else None
        if row is None:
            raise AuthenticationFailed("invalid API key")
        if row.revoked:
            raise AuthenticationFailed("this API key has been revoked")
        self._used[row.id] = time.time()
        return row

    def counts(self) -> dict[str, int]:
        revoked = sum(1 for r in self._by_id.values() if r.revoked)
        return {"keys_active": len(self._by_id) - revoked, "keys_revoked": revoked}

    async def flush(self) -> None:
        """Persist the batch of last-used times gathered since the previous flush."""
        if not self._used:
            return
        batch, self._used = self._used, {}
        await self._db.call(sql.touch_many, batch)
        for key_id, when in batch.items():
            row = self._by_id.get(key_id)
            if row is not None:
                updated = replace(row, last_used_at=max(row.last_used_at or 0.0, when))
                self._by_id[key_id] = updated
                self._by_hash[updated.key_sha256] = updated

    def _with_usage(self, row: KeyRow) -> KeyRow:
        pending = self._used.get(row.id)
        if pending is None:
            return row
        return replace(row, last_used_at=max(row.last_used_at or 0.0, pending))

"""Usage and cost accounting, and spending budgets per API key.

:meth:`UsageRecorder.record` runs on the event loop for every request: it adds to an
in-memory batch keyed by (UTC day, key, provider, model) and to the running spend of the
key's budget, in O(1). :meth:`UsageRecorder.flush` writes the batch in one transaction in
the database thread; a task started by :meth:`UsageRecorder.start` does so periodically.

Budgets: a key's spend in its ``budget_period`` — ``day`` (UTC), ``week`` (ISO, from
Monday 00:00 UTC), ``month`` (UTC) or ``total`` — is loaded once from the database by
:meth:`UsageRecorder.prime` (which also counts what is recorded but not yet flushed) and
then kept up to date in memory by ``record``; when a period ends the spend starts again
at 0. :meth:`UsageRecorder.check_budget` is then a synchronous O(1) comparison.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

from .errors import BudgetExceeded
from .store import Database
from .store import usage as sql
from .store.keys import KeyRow
from .store.usage import UsageRow

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 10.0
_DAY_S = 86400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

#: (epoch day, key id or '', provider, model)
_BatchKey = tuple[int, str, str, str]


def epoch_day(day: date) -> int:
    return day.toordinal() - _EPOCH_ORDINAL


def from_epoch_day(day: int) -> date:
    return date.fromordinal(day + _EPOCH_ORDINAL)


def period_bounds(period: str, day: int) -> tuple[int | None, int | None]:
    """First day and the day after the last of the budget period holding epoch day ``day``;
    ``(None, None)`` for ``total``, which never ends."""
    if period == "day":
        return day, day + 1
    if period == "week":
        start = day - (day + 3) % 7  # 1970-01-01 was a Thursday
        return start, start + 7
    if period == "month":
        first = from_epoch_day(day).replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return epoch_day(first), epoch_day(following)
    if period == "total":
        return None, None
    raise ValueError(f"unknown budget period {period!r}")


class _Spend:
    """A key's spend in its current budget period."""

    __slots__ = ("period", "start", "end", "spent")

    def __init__(self, period: str, day: int, spent: float) -> None:
        self.period = period
        self.start, self.end = period_bounds(period, day)
        self.spent = spent

    def advance(self, day: int) -> None:
        """Move on to the period holding ``day`` when the current one has ended."""
        if self.end is not None and day >= self.end:
            self.start, self.end = period_bounds(self.period, day)
            self.spent = 0.0

    def add(self, day: int, cost: float) -> None:
        self.advance(day)
        if self.start is None or day >= self.start:
            self.spent += cost


class UsageRecorder:
    """Aggregates usage in memory, flushes it in batches and enforces per-key budgets."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time,
                 flush_interval: float = FLUSH_INTERVAL_S) -> None:
        self._db = db
        self._clock = clock
        self._flush_interval = flush_interval
        #: value: [requests, prompt_tokens, completion_tokens, cost]
        self._pending: dict[_BatchKey, list[float]] = {}
        self._spend: dict[str, _Spend] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str | None, provider: str, model: str, prompt_tokens: int,
               completion_tokens: int, cost: float) -> None:
        """Count one finished request. O(1), no I/O."""
        day = int(self._clock() // _DAY_S)
        batch_key = (day, key_id or "", provider, model)
        acc = self._pending.get(batch_key)
        if acc is None:
            self._pending[batch_key] = [1, prompt_tokens, completion_tokens, cost]
        else:
            acc[0] += 1
            acc[1] += prompt_tokens
            acc[2] += completion_tokens
            acc[3] += cost
        if key_id is not None:
            spend = self._spend.get(key_id)
            if spend is not None:
                spend.add(day, cost)

    def is_primed(self, key: KeyRow) -> bool:
        """Whether :meth:`check_budget` can answer for ``key`` without :meth:`prime`."""
        if key.max_budget is None:
            return True
        spend = self._spend.get(key.id)
        return spend is not None and spend.period == key.budget_period

    async def prime(self, key: KeyRow) -> None:
        """Load the key's spend in its current budget period, once; returns at once when loaded."""
        if self.is_primed(key):
            return
        async with self._lock:  # no flush in between: the database and the batch do not overlap
            if self.is_primed(key):
                return
            today = self._today()
            start, _ = period_bounds(key.budget_period, today)
            since = None if start is None else from_epoch_day(start)
            spent = await self._db.call(sql.spent, key.id, since)
            spent += sum(acc[3] for (day, key_id, _, _), acc in self._pending.items()
                         if key_id == key.id and (start is None or day >= start))
            self._spend[key.id] = spend = _Spend(key.budget_period, today, spent)
            spend.advance(self._today())  # the period may have ended while the database answered

    def check_budget(self, key: KeyRow) -> None:
        """Raise :class:`BudgetExceeded` when the key has spent its budget for this period.

        Synchronous and O(1); ``await prime(key)`` must have run for this key (see :meth:`is_primed`).
        """
        if key.max_budget is None:
            return
        spend = self._spend.get(key.id)
        if spend is None or spend.period != key.budget_period:
            raise RuntimeError(f"budget of key {key.id} checked before UsageRecorder.prime()")
        now = self._clock()
        spend.advance(int(now // _DAY_S))
        if spend.spent < key.max_budget:
            return
        per = "in total" if key.budget_period == "total" else f"per {key.budget_period}"
        if spend.end is None:
            raise BudgetExceeded(f"budget of {key.max_budget:.2f} {per} for key {key.id} is used up; "
                                 "it does not reset")
        resets = datetime.fromtimestamp(spend.end * _DAY_S, timezone.utc)
        raise BudgetExceeded(f"budget of {key.max_budget:.2f} {per} for key {key.id} is used up; "
                             f"resets at {resets:%Y-%m-%d %H:%M} UTC", retry_after=spend.end * _DAY_S - now)

    async def flush(self) -> None:
        """Write the batch gathered since the last flush, in one transaction off the loop."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [UsageRow(from_epoch_day(day), key_id or None, provider, model, int(acc[0]), int(acc[1]),
                             int(acc[2]), acc[3]) for (day, key_id, provider, model), acc in batch.items()]
            try:
                await self._db.call(sql.upsert_many, rows)
            except Exception:
                self._merge_back(batch)
                raise

    async def query(self, key_id: str | None, since: date | None) -> list[UsageRow]:
        """Usage rows of one key (every key when None) from ``since`` on, the latest batch included."""
        await self.flush()
        return await self._db.call(sql.select, key_id, since)

    def start(self) -> None:
        """Start flushing every ``flush_interval`` seconds."""
        self._task = asyncio.create_task(self._flush_periodically(), name="usage-flush")

    async def stop(self) -> None:
        """Stop the periodic flush (letting a running one finish) and flush what is left."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    def _today(self) -> int:
        return int(self._clock() // _DAY_S)

    def _merge_back(self, batch: dict[_BatchKey, list[float]]) -> None:
        for batch_key, acc in batch.items():
            current = self._pending.get(batch_key)
            if current is None:
                self._pending[batch_key] = acc
            else:
                for i, value in enumerate(acc):
                    current[i] += value

    async def _flush_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._flush_interval)
            except asyncio.TimeoutError:
                pass
            try:
                await self.flush()
            except Exception:
                log.exception("writing usage failed; will retry")

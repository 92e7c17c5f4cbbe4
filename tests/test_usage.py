"""Usage accounting and budgets: batching into SQLite, budget periods, on a fake wall clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TypeVar

import pytest

from securellm_bridge.errors import BudgetExceeded
from securellm_bridge.store import Database
from securellm_bridge.store.keys import KeyRow
from securellm_bridge.store.usage import UsageRow, upsert_many
from securellm_bridge.usage import UsageRecorder, epoch_day, period_bounds

T = TypeVar("T")


class Clock:
    def __init__(self, when: str) -> None:
        self.now = 0.0
        self.set(when)

    def set(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def key(key_id: str = "key_x", budget: float | None = 2.5, period: str = "day") -> KeyRow:
    return KeyRow(id=key_id, key_sha256="0" * 64, owner="t", allowed_models=(), created_at=0.0,
                  last_used_at=None, revoked=False, revoked_at=None, max_budget=budget, budget_period=period)


def with_db(tmp_path: Path, body: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        db = await Database.open(str(tmp_path / "state"))
        try:
            return await body(db)
        finally:
            await db.close()

    return asyncio.run(go())


def test_period_bounds() -> None:
    sunday = epoch_day(date(2024, 3, 10))
    assert period_bounds("day", sunday) == (sunday, sunday + 1)
    assert period_bounds("week", sunday) == (epoch_day(date(2024, 3, 4)), epoch_day(date(2024, 3, 11)))
    monday = epoch_day(date(2024, 3, 11))
    assert period_bounds("week", monday) == (monday, monday + 7)
    assert period_bounds("month", epoch_day(date(2024, 2, 29))) == (epoch_day(date(2024, 2, 1)),
                                                                    epoch_day(date(2024, 3, 1)))
    assert period_bounds("month", epoch_day(date(2023, 12, 31))) == (epoch_day(date(2023, 12, 1)),
                                                                     epoch_day(date(2024, 1, 1)))
    assert period_bounds("total", sunday) == (None, None)


def test_many_records_are_one_transaction_of_aggregated_rows(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        clock = Clock("2024-03-10T12:00:00")
        usage = UsageRecorder(db, clock=clock)
        for i in range(1000):
            usage.record("key_a" if i % 2 else None, "openai", "gpt-4o", 10, 5, 0.001)
        usage.record("key_a", "anthropic", "claude", 1, 2, 0.5)
        clock.set("2024-03-11T00:00:00")
        usage.record("key_a", "openai", "gpt-4o", 3, 4, 0.25)
        statements: list[str] = []
        await db.call(lambda c: c.set_trace_callback(statements.append))
        await usage.flush()
        await usage.flush()  # nothing new: no statement at all
        await db.call(lambda c: c.set_trace_callback(None))
        assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == ["BEGIN", "COMMIT"]
        assert sum(1 for s in statements if "INSERT INTO usage_daily" in s) == 4
        rows = await usage.query(None, None)
        assert [(r.day, r.key_id, r.provider, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
            (date(2024, 3, 10), None, "openai", 500, 5000, 2500),
            (date(2024, 3, 10), "key_a", "anthropic", 1, 1, 2),
            (date(2024, 3, 10), "key_a", "openai", 500, 5000, 2500),
            (date(2024, 3, 11), "key_a", "openai", 1, 3, 4),
        ]
        assert rows[0].cost == pytest.approx(0.5)
        usage.record("key_a", "openai", "gpt-4o", 1, 1, 0.25)  # upserted onto the existing row
        assert (await usage.query("key_a", date(2024, 3, 11)))[0].requests == 2
        assert await usage.query("key_b", None) == []

    with_db(tmp_path, body)


def test_a_failed_flush_keeps_the_batch_for_the_next(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        usage = UsageRecorder(db, clock=Clock("2024-03-10T12:00:00"))
        usage.record("key_a", "openai", "m", 1, 1, 1.0)
        await db.call(lambda c: c.execute("ALTER TABLE usage_daily RENAME TO usage_away"))
        with pytest.raises(Exception, match="usage_daily"):
            await usage.flush()
        usage.record("key_a", "openai", "m", 1, 1, 1.0)
        await db.call(lambda c: c.execute("ALTER TABLE usage_away RENAME TO usage_daily"))
        rows = await usage.query(None, None)
        assert [(r.requests, r.cost) for r in rows] == [(2, 2.0)]

    with_db(tmp_path, body)


def test_daily_budget_and_its_reset_at_midnight_utc(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        clock = Clock("2024-03-10T23:59:00")
        usage = UsageRecorder(db, clock=clock)
        k = key(budget=2.5, period="day")
        await usage.prime(k)
        usage.check_budget(k)
        usage.record(k.id, "openai", "m", 1, 1, 2.0)
        usage.check_budget(k)
        usage.record(k.id, "openai", "m", 1, 1, 0.5)
        with pytest.raises(BudgetExceeded) as info:
            usage.check_budget(k)
        assert info.value.message == ("budget of 2.50 per day for key key_x is used up; "
                                      "resets at 2024-03-11 00:00 UTC")
        assert info.value.retry_after == pytest.approx(60.0)
        clock.set("2024-03-11T00:00:00")
        usage.check_budget(k)
        usage.record(k.id, "openai", "m", 1, 1, 2.4)
        usage.check_budget(k)

    with_db(tmp_path, body)


def test_weekly_budget_runs_monday_to_monday(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        clock = Clock("2024-03-04T00:00:00")  # a Monday
        usage = UsageRecorder(db, clock=clock)
        k = key(budget=1.0, period="week")
        await usage.prime(k)
        usage.record(k.id, "p", "m", 1, 1, 1.0)
        await usage.flush()
        clock.set("2024-03-10T23:59:59")  # Sunday
        with pytest.raises(BudgetExceeded, match="per week .* resets at 2024-03-11 00:00 UTC"):
            usage.check_budget(k)
        clock.set("2024-03-11T00:00:00")
        usage.check_budget(k)

    with_db(tmp_path, body)


def test_monthly_budget_resets_on_the_first(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        clock = Clock("2024-01-01T00:00:00")
        usage = UsageRecorder(db, clock=clock)
        k = key(budget=3.0, period="month")
        await usage.prime(k)
        usage.record(k.id, "p", "m", 1, 1, 1.0)
        clock.set("2024-01-31T23:59:59")
        usage.record(k.id, "p", "m", 1, 1, 2.0)
        with pytest.raises(BudgetExceeded, match="resets at 2024-02-01 00:00 UTC") as info:
            usage.check_budget(k)
        assert info.value.retry_after == pytest.approx(1.0)
        clock.set("2024-02-01T00:00:00")
        usage.check_budget(k)
        usage.record(k.id, "p", "m", 1, 1, 2.9)  # the first record of February counts from 0
        usage.check_budget(k)
        usage.record(k.id, "p", "m", 1, 1, 0.1)
        with pytest.raises(BudgetExceeded, match="resets at 2024-03-01"):
            usage.check_budget(k)

    with_db(tmp_path, body)


def test_total_budget_never_resets(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        clock = Clock("2024-01-01T00:00:00")
        usage = UsageRecorder(db, clock=clock)
        k = key(budget=1.0, period="total")
        await usage.prime(k)
        usage.record(k.id, "p", "m", 1, 1, 1.0)
        clock.set("2030-01-01T00:00:00")
        with pytest.raises(BudgetExceeded) as info:
            usage.check_budget(k)
        assert info.value.message == "budget of 1.00 in total for key key_x is used up; it does not reset"
        assert info.value.retry_after is None

    with_db(tmp_path, body)


def test_prime_counts_the_database_and_the_unflushed_batch_of_the_period_only(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await db.call(upsert_many, [
            UsageRow(date(2024, 2, 29), "key_x", "p", "m", 1, 1, 1, 100.0),  # last month
            UsageRow(date(2024, 3, 1), "key_x", "p", "m", 1, 1, 1, 1.0),
            UsageRow(date(2024, 3, 9), "key_x", "p", "m", 1, 1, 1, 1.0),
            UsageRow(date(2024, 3, 10), "key_other", "p", "m", 1, 1, 1, 100.0),
        ])
        # this month 2.0 in the database; today nothing; ever 102.0
        for period, budget in (("month", 2.6), ("day", 0.6), ("total", 102.6)):
            usage = UsageRecorder(db, clock=Clock("2024-03-10T12:00:00"))
            usage.record("key_x", "p", "m", 1, 1, 0.5)  # recorded before the prime, not flushed
            k = key(budget=budget, period=period)
            assert not usage.is_primed(k)
            with pytest.raises(RuntimeError, match="prime"):
                usage.check_budget(k)
            await usage.prime(k)
            assert usage.is_primed(k)
            usage.check_budget(k)
            usage.record("key_x", "p", "m", 1, 1, 0.1)
            with pytest.raises(BudgetExceeded):
                usage.check_budget(k)
        unlimited = key(budget=None)
        assert usage.is_primed(unlimited)
        usage.check_budget(unlimited)

    with_db(tmp_path, body)


def test_zero_budget_refuses_from_the_start(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        usage = UsageRecorder(db, clock=Clock("2024-03-10T12:00:00"))
        k = key(budget=0.0, period="month")
        await usage.prime(k)
        with pytest.raises(BudgetExceeded, match="budget of 0.00 per month"):
            usage.check_budget(k)

    with_db(tmp_path, body)


def test_periodic_flush_and_final_flush_on_stop(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        usage = UsageRecorder(db, flush_interval=0.01)
        usage.start()
        usage.record("key_a", "p", "m", 1, 1, 1.0)
        count = "SELECT COALESCE(SUM(requests), 0) FROM usage_daily"
        for _ in range(500):  # wait for the background flush, without asking for one
            if await db.call(lambda c: c.execute(count).fetchone()[0]) == 1:
                break
            await asyncio.sleep(0.01)
        assert await db.call(lambda c: c.execute(count).fetchone()[0]) == 1
        usage.record("key_a", "p", "m", 1, 1, 1.0)
        usage_stopped = UsageRecorder(db, flush_interval=3600)
        usage_stopped.start()
        usage_stopped.record("key_b", "p", "m", 1, 1, 1.0)
        await usage_stopped.stop()  # does not wait an hour, and writes what is left
        await usage.stop()
        assert await db.call(lambda c: c.execute(count).fetchone()[0]) == 3

    with_db(tmp_path, body)

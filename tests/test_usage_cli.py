"""``securellmctl usage`` and the Usage gRPC service against a real daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import date, datetime, timedelta, timezone
from typing import Callable

import grpc
import pytest

from securellm_bridge._pb import usage_pb2, usage_pb2_grpc
from securellm_bridge.store import Database
from securellm_bridge.store import keys as keys_sql
from securellm_bridge.store.keys import KeyRow
from securellm_bridge.store.usage import UsageRow, upsert_many
from securellmctl.commands.usage import since_date

from .daemon import Daemon

TODAY = datetime.now(timezone.utc).date()
LONG_AGO = TODAY - timedelta(days=30)


def _seed(daemon: Daemon) -> None:
    async def go() -> None:
        db = await Database.open(str(daemon.state_dir))
        await db.call(keys_sql.insert, KeyRow(
            id="key_seeded", key_sha256="ab" * 32, owner="seed", allowed_models=(), created_at=0.0,
            last_used_at=None, revoked=False, revoked_at=None))
        await db.call(upsert_many, [
            UsageRow(LONG_AGO, "key_seeded", "openai", "gpt-4o", 3, 300, 30, 1.5),
            UsageRow(TODAY, "key_seeded", "anthropic", "claude", 2, 200, 20, 0.25),
            UsageRow(TODAY, None, "local", "llama", 5, 500, 50, 0.0),
        ])
        await db.close()

    asyncio.run(go())


@pytest.mark.slow
def test_usage_of_a_fresh_daemon_is_empty(daemon: Daemon) -> None:
    r = daemon.ctl("usage")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no usage recorded"
    data = json.loads(daemon.ctl("usage", "--json").stdout)
    assert data == {"rows": [], "totals": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                           "cost": 0.0}}


@pytest.mark.slow
def test_usage_rows_filters_and_totals(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    _seed(daemon)
    daemon.start()

    data = json.loads(daemon.ctl("usage", "--json").stdout)
    assert [(r["day"], r["key_id"], r["provider"], r["requests"]) for r in data["rows"]] == [
        (LONG_AGO.isoformat(), "key_seeded", "openai", 3),
        (TODAY.isoformat(), None, "local", 5),
        (TODAY.isoformat(), "key_seeded", "anthropic", 2),
    ]
    assert data["totals"] == {"requests": 10, "prompt_tokens": 1000, "completion_tokens": 100, "cost": 1.75}

    data = json.loads(daemon.ctl("usage", "--key", "key_seeded", "--since", "7d", "--json").stdout)
    assert [(r["provider"], r["cost"]) for r in data["rows"]] == [("anthropic", 0.25)]
    data = json.loads(daemon.ctl("usage", "--since", LONG_AGO.isoformat(), "--key", "key_seeded",
                                 "--json").stdout)
    assert data["totals"]["requests"] == 5

    table = daemon.ctl("usage")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["DAY", "KEY", "PROVIDER", "MODEL"]
    assert lines[-1].split() == ["total", "10", "1000", "100", "1.7500"]
    assert any(line.split()[:3] == [TODAY.isoformat(), "-", "local"] for line in lines)

    r = daemon.ctl("usage", "--key", "key_nope")
    assert r.returncode == 1 and "no API key with id 'key_nope'" in r.stderr
    r = daemon.ctl("usage", "--since", "last week")
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr


@pytest.mark.slow
def test_usage_grpc_rejects_a_bad_date(daemon: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = usage_pb2_grpc.UsageStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(usage_pb2.GetUsageRequest(since="2024-13-01"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "YYYY-MM-DD" in (info.value.details() or "")  # type: ignore[attr-defined]
        reply = stub.Get(usage_pb2.GetUsageRequest(since="2024-01-01"), timeout=10)
        assert list(reply.rows) == [] and reply.totals.requests == 0


def test_since_date_forms() -> None:
    today = date(2024, 3, 10)
    assert since_date("1d", today) == today
    assert since_date("7d", today) == date(2024, 3, 4)
    assert since_date("2024-02-29") == date(2024, 2, 29)
    for bad in ("0d", "7", "2024-02-30", "24-02-01", "7d\n"):
        with pytest.raises(argparse.ArgumentTypeError):
            since_date(bad, today)

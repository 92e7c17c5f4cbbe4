"""The audit writer, the JSONL sink and the state file, in this process (no daemon).

Most AuditLogs here have ``[security.audit] file`` set, so each record reaches the file
whether or not a journald runs, and the file alone shows what was written.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import pytest
from prometheus_client import REGISTRY

from securellm_bridge.audit import AuditLog, RequestAudit, chainkey
from securellm_bridge.audit.chain import GENESIS, key_id, link
from securellm_bridge.audit.events import EVENTS
from securellm_bridge.audit.record import CHAIN, build
from securellm_bridge.audit.reader import FileSource, Filter, JournalSource
from securellm_bridge.audit.sinks import FileSink, file_set, rotated_files
from securellm_bridge.audit.state import ChainState, StateFile
from securellm_bridge.audit.verify import verify
from securellm_bridge.config import parse_text
from securellm_bridge.config.secrets import Secret
from securellm_bridge.config.security import AuditConfig
from securellm_bridge.errors import ConfigErrors, StateError

from .journal import JOURNAL_DIR, Journal, journald  # noqa: F401  (fixture)

T = TypeVar("T")


def lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def write_events(cfg: AuditConfig, state: Path, n: int) -> AuditLog:
    log = AuditLog(cfg, str(state))
    await log.start()
    for i in range(n):
        log.admin("key_created", key_id=f"key_{i}", owner="alice")
    await log.close()
    return log


def test_records_are_chained_and_continue_across_restarts(tmp_path: Path) -> None:
    cfg = AuditConfig(file=str(tmp_path / "audit.jsonl"))
    assert run(write_events(cfg, tmp_path, 3)).last_seq == 3
    assert run(write_events(cfg, tmp_path, 2)).last_seq == 5
    records = lines(tmp_path / "audit.jsonl")
    assert [r["SECURELLM_SEQ"] for r in records] == ["1", "2", "3", "4", "5"]
    key = chainkey.read_key_file(chainkey.key_path(str(tmp_path)))
    report = verify(FileSource([tmp_path / "audit.jsonl"]).entries(Filter()), key, source="f")
    assert report.ok and report.records == 5 and report.notes == ()
    assert stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(chainkey.key_path(str(tmp_path))).st_mode) == 0o600


def test_an_interrupted_batch_is_resent_after_a_crash(tmp_path: Path) -> None:
    cfg = AuditConfig(file=str(tmp_path / "audit.jsonl"))
    run(write_events(cfg, tmp_path, 2))
    delivered = lines(tmp_path / "audit.jsonl")
    # What the writer leaves behind when killed between saving a batch and delivering it:
    # the chain position already counts the batch, and the batch is pending.
    state_file = StateFile(str(tmp_path))
    state = state_file.load()
    key = chainkey.read_key_file(chainkey.key_path(str(tmp_path)))
    pending = build(EVENTS["key_revoked"], {"key_id": "key_0"}, seq=3, when=time.time(), priority=5)
    pending[CHAIN] = link(key, state.chain, pending)
    state_file.save(ChainState(3, pending[CHAIN], state.key_id, (pending,)), durable=False)
    (tmp_path / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in delivered))
    run(write_events(cfg, tmp_path, 1))
    records = lines(tmp_path / "audit.jsonl")
    assert [r["SECURELLM_SEQ"] for r in records] == ["1", "2", "3", "4"]
    assert records[2]["SECURELLM_EVENT"] == "key_revoked"
    assert verify(FileSource([tmp_path / "audit.jsonl"]).entries(Filter()), key, source="f").ok
    assert state_file.load().pending == ()


def test_configured_chain_key_and_key_change_starts_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = Secret("a" * 40)
    run(write_events(AuditConfig(file=str(path), chain_key=first), tmp_path, 2))
    assert not chainkey.key_path(str(tmp_path)).exists()
    run(write_events(AuditConfig(file=str(path), chain_key=Secret("b" * 40)), tmp_path, 1))
    records = lines(path)
    assert [r["SECURELLM_SEQ"] for r in records] == ["1", "2", "1"]
    assert StateFile(str(tmp_path)).load().key_id == key_id(b"b" * 40)
    report = verify(FileSource([path]).entries(Filter()), b"a" * 40, source="f")
    assert not report.ok and report.records == 2  # the new chain is not the old key's
    assert "a" * 40 not in path.read_text() + (tmp_path / "audit.state").read_text()


def test_disabled_writes_nothing_and_reload_toggles_prompts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(AuditConfig(file=str(path), enabled=False), str(tmp_path))
        await log.start()
        log.admin("key_created", key_id="key_x", owner="x")
        await log.flush()
        assert not path.exists()
        log.configure(AuditConfig(file=str(path), log_requests=True))
        log.request(RequestAudit("r1", "/v1/chat/completions", 200, 3.0, prompt="first prompt", response="answer"))
        log.configure(AuditConfig(file=str(path)))
        log.request(RequestAudit("r2", "/v1/chat/completions", 429, 1.0, prompt="second prompt"))
        await log.close()

    run(scenario())
    first, second = lines(path)
    assert first["SECURELLM_PROMPT"] == "first prompt" and "SECURELLM_RESPONSE" not in first
    assert "SECURELLM_PROMPT" not in second and second["PRIORITY"] == "5"
    assert [first["SECURELLM_SEQ"], second["SECURELLM_SEQ"]] == ["1", "2"]


def test_unknown_event_kinds_and_fields_are_refused(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(), str(tmp_path))
    with pytest.raises(ValueError, match="unknown audit event"):
        log.admin("auth_failure", reason="x")
    with pytest.raises(ValueError, match="unknown audit event"):
        log.security("key_created", key_id="x")
    with pytest.raises(ValueError, match="field name"):
        log.security("auth_failure", SEQ="1")


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(AuditConfig(file=str(path)), str(tmp_path))
        for i in range(50):  # queued before start: written once it runs
            log.security("rate_limited", key_id=f"key_{i}", limit="rpm")
        await log.start()
        for i in range(1000):
            log.security("rate_limited", key_id=f"key_{i}", limit="rpm")
        await log.close()

    run(scenario())
    assert len(lines(path)) == 1050


def test_size_rotation_and_reading_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    cfg = AuditConfig(file=str(path), rotate="size", rotate_max_bytes=2000)
    run(write_events(cfg, tmp_path, 40))
    rotated = rotated_files(path)
    assert len(rotated) >= 3
    assert all(p.stat().st_size <= 2000 for p in rotated)
    assert file_set(path) == [*rotated, path]
    key = chainkey.read_key_file(chainkey.key_path(str(tmp_path)))
    report = verify(FileSource([path]).entries(Filter()), key, source="f")
    assert report.ok and report.records == 40


def test_daily_rotation_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = tmp_path / "audit.jsonl.20200101T000000000000Z"
    old.write_text("{}\n")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    recent = tmp_path / "audit.jsonl.20200102T000000000000Z"
    recent.write_text("{}\n")
    unrelated = tmp_path / "audit.jsonl.bak"
    unrelated.write_text("keep me\n")
    path.write_text('{"from": "yesterday"}\n')
    os.utime(path, (time.time() - 86400,) * 2)
    sink = FileSink(path, "daily", retention_days=30)
    sink.write_lines(['{"SECURELLM_SEQ":"1"}'])
    sink.close()
    assert not old.exists() and recent.exists() and unrelated.exists()
    rotated = rotated_files(path)
    assert len(rotated) == 2 and rotated[0] == recent
    assert rotated[1].read_text() == '{"from": "yesterday"}\n'
    assert lines(path) == [{"SECURELLM_SEQ": "1"}]


def test_state_file_problems_stop_the_start(tmp_path: Path) -> None:
    (tmp_path / "audit.state").write_text('{"version": 1, "seq": -1}')
    with pytest.raises(StateError, match="malformed"):
        StateFile(str(tmp_path)).load()
    (tmp_path / "audit.state").write_text("not json")
    with pytest.raises(StateError, match="unreadable"):
        StateFile(str(tmp_path)).load()
    StateFile(str(tmp_path)).save(ChainState(), durable=True)
    assert StateFile(str(tmp_path)).load() == ChainState(0, GENESIS, "", ())


def test_key_file_must_be_private(tmp_path: Path) -> None:
    key = chainkey.load_or_create(AuditConfig(), str(tmp_path))
    assert len(key) == 64 and chainkey.load_or_create(AuditConfig(), str(tmp_path)) == key
    os.chmod(chainkey.key_path(str(tmp_path)), 0o640)
    with pytest.raises(StateError, match="must not be accessible"):
        chainkey.load_or_create(AuditConfig(), str(tmp_path))


def test_config_keys_and_short_chain_key() -> None:
    base = '[security.tls]\nenabled = false\n[security.audit]\n'
    cfg = parse_text(base + 'file = "/var/log/a.jsonl"\nrotate = "size"\nrotate_max_bytes = 10\n'
                     'retention_days = 0\n', "t.toml", env={})
    audit = cfg.security.audit
    assert (audit.rotate, audit.rotate_max_bytes, audit.retention_days) == ("size", 10, 0)
    with pytest.raises(ConfigErrors, match="at least 32 characters"):
        parse_text(base + 'chain_key = "short"\n', "t.toml", env={})
    with pytest.raises(ConfigErrors, match="rotate"):
        parse_text(base + 'rotate = "weekly"\n', "t.toml", env={})
    assert parse_text(base + 'chain_key = "${K}"\n', "t.toml", env={}, resolve_secrets=False)


def test_large_and_multiline_values_reach_journald(journald: Journal, tmp_path: Path) -> None:
    prompt = "line one\nline two\n" + "x" * 300_000  # larger than a datagram: sent in a memfd
    fallback_before = REGISTRY.get_sample_value("securellm_audit_fallback_total") or 0.0

    async def scenario() -> None:
        log = AuditLog(AuditConfig(log_requests=True), str(tmp_path))
        await log.start()
        log.request(RequestAudit(f"big-{os.getpid()}", "/v1/chat/completions", 200, 1.0, prompt=prompt))
        log.admin("key_created", key_id=f"key-nl-{os.getpid()}", owner="multi\nline")
        await log.close()

    run(scenario())
    assert (REGISTRY.get_sample_value("securellm_audit_fallback_total") or 0.0) == fallback_before
    assert not (tmp_path / "audit-fallback.jsonl").exists()
    journald.wait_for(f"SECURELLM_REQUEST_ID=big-{os.getpid()}")  # journald stores asynchronously
    journald.wait_for(f"SECURELLM_KEY_ID=key-nl-{os.getpid()}")
    mine = [e for e in JournalSource(JOURNAL_DIR).entries(Filter(journald.since))
            if e.fields.get("SECURELLM_REQUEST_ID") == f"big-{os.getpid()}"
            or e.fields.get("SECURELLM_KEY_ID") == f"key-nl-{os.getpid()}"]
    assert [e.event for e in mine] == ["request", "key_created"]
    assert mine[0].fields["SECURELLM_PROMPT"] == prompt and mine[1].fields["SECURELLM_OWNER"] == "multi\nline"
    key = chainkey.read_key_file(chainkey.key_path(str(tmp_path)))
    assert verify(mine, key, source="journal").ok

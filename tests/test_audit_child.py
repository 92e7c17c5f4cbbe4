"""The audit writer process (audit/child.py) with real processes: what reaches the JSONL sink,
acknowledgements, restarts after ``kill -9``, signals, EOF, and the daemon-side counters.

Every AuditLog here has ``[security.audit] file`` set: each record reaches the file whether
or not a journald runs, so the file shows what was written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar

import pytest
import uvloop
from prometheus_client import REGISTRY

from securellm_bridge.audit import AuditLog, RequestAudit, chainkey, process
from securellm_bridge.audit.pipe import ACK, INIT, READY, RECORDS, Frames, frame
from securellm_bridge.audit.reader import FileSource, Filter
from securellm_bridge.audit.verify import verify
from securellm_bridge.config.security import AuditConfig
from securellm_bridge.errors import StateError

T = TypeVar("T")
DAEMON_DIR = Path(__file__).resolve().parents[1] / "daemon"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a scenario on asyncio's loop and on uvloop (the daemon's)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner


def lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counters() -> dict[str, float]:
    return {"journal": counter("securellm_audit_records_total", sink="journal"),
            "file": counter("securellm_audit_records_total", sink="file"),
            "fallback": counter("securellm_audit_fallback_total"),
            "errors": counter("securellm_audit_errors_total"),
            "restarts": counter("securellm_audit_writer_restarts_total")}


def delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in counters().items()}


def verified(path: Path, state: Path) -> Any:
    key = chainkey.read_key_file(chainkey.key_path(str(state)))
    return verify(FileSource([path]).entries(Filter()), key, source="f")


def alive(pid: int) -> bool:
    """Running (a zombie, or a pid that is gone, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_records_are_written_by_a_child_and_counted_in_the_parent(run: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = counters()

    async def scenario() -> tuple[int, int]:
        log = AuditLog(AuditConfig(file=str(path)), str(tmp_path))
        log.admin("key_created", key_id="key_early", owner="alice")  # before start: queued
        await log.start()
        pid = log.writer_pid
        assert pid is not None and pid != os.getpid() and alive(pid)
        for i in range(300):
            log.request(RequestAudit(f"r{i}", "chat", 200, 1.5, key_id="key_1", provider="p", model="m"))
        await asyncio.wait_for(log.flush(), 30)  # resolves once the writer acknowledged every record emitted before it
        assert len(lines(path)) == 301 and log.last_seq == 301
        log.security("rate_limited", key_id="key_1", limit="rpm")  # emitted right before close: written
        await log.close()
        return pid, log.last_seq

    pid, last_seq = run(scenario())
    assert last_seq == 302 and not alive(pid)
    records = lines(path)
    assert [r["SECURELLM_SEQ"] for r in records] == [str(i) for i in range(1, 303)]
    assert records[0]["SECURELLM_KEY_ID"] == "key_early" and records[-1]["SECURELLM_EVENT"] == "rate_limited"
    assert records[1]["MESSAGE"] == "chat p/m -> 200 in 1.5 ms (request r0, key key_1)"
    report = verified(path, tmp_path)
    assert report.ok and report.records == 302 and report.notes == ()
    moved = delta(before)
    assert moved["file"] == 302 and moved["journal"] + moved["fallback"] == 302
    assert moved["errors"] == 0 and moved["restarts"] == 0


def test_kill_9_of_the_writer_mid_stream_loses_nothing(run: Callable[..., Any], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    before = counters()
    sizes = [200] * 4 + [2000] + [200] * 5

    async def scenario() -> AuditLog:
        log = AuditLog(AuditConfig(file=str(path)), str(tmp_path))
        await log.start()
        first = log.writer_pid
        assert first is not None
        for burst in range(10):
            for i in range(sizes[burst]):
                log.admin("key_created", key_id=f"key_{burst}_{i}", owner="o")
            if burst == 4:  # 2000 records take the writer ~0.1 s: kill it while it writes them
                while log._writer.unacknowledged == 0:  # until they are handed over (SEND_INTERVAL_S)
                    await asyncio.sleep(0.001)
                os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(log.flush(), 30)
        assert log.writer_pid not in (None, first) and log.writer_restarts == 1
        await log.close()
        return log

    with caplog.at_level(logging.ERROR, logger="securellm_bridge.audit"):
        log = run(scenario())
    assert "was killed by signal 9" in caplog.text
    resent = re.search(r"; (\d+) unconfirmed audit records are re-sent", caplog.text)
    assert resent and int(resent.group(1)) > 0, caplog.text
    records = lines(path)
    assert {r["SECURELLM_KEY_ID"] for r in records} == {f"key_{b}_{i}" for b in range(10) for i in range(sizes[b])}
    seqs = [int(r["SECURELLM_SEQ"]) for r in records]
    assert sorted(set(seqs)) == list(range(1, log.last_seq + 1))  # no gap; re-sent records numbered anew
    report = verified(path, tmp_path)
    assert report.ok, report
    moved = delta(before)
    assert moved["restarts"] == 1 and moved["errors"] == 0 and moved["file"] >= 3800


def test_a_writer_that_cannot_start_keeps_the_records_and_is_retried(
        run: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    before = counters()
    monkeypatch.setattr(process, "CHILD_MODULE", "securellm_bridge.audit.no_such_module")

    async def scenario() -> AuditLog:
        log = AuditLog(AuditConfig(file=str(path)), str(tmp_path))
        for i in range(5):
            log.admin("key_created", key_id=f"key_{i}", owner="o")
        await log.start()  # does not raise: records wait, the start is retried
        assert log.writer_pid is None
        await asyncio.sleep(0.5)  # a few failed retries (0.1 s, 0.2 s, ...)
        assert log.writer_restarts >= 1 and not path.exists()
        monkeypatch.setattr(process, "CHILD_MODULE", "securellm_bridge.audit.child")
        await asyncio.wait_for(log.flush(), 30)
        await log.close()
        return log

    with caplog.at_level(logging.CRITICAL, logger="securellm_bridge.audit"):
        log = run(scenario())
    assert "the audit writer process cannot be started: it exited with status 1" in caplog.text
    assert "5 audit records wait unwritten in memory" in caplog.text
    assert [r["SECURELLM_KEY_ID"] for r in lines(path)] == [f"key_{i}" for i in range(5)]
    moved = delta(before)
    assert moved["errors"] == 5  # counted once, when they could not be written
    assert moved["restarts"] == log.writer_restarts >= 2


def test_an_unusable_chain_key_stops_the_start(run: Callable[..., Any], tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    chainkey.load_or_create(AuditConfig(), str(tmp_path))
    os.chmod(chainkey.key_path(str(tmp_path)), 0o644)
    before = counters()

    async def scenario() -> None:
        log = AuditLog(AuditConfig(file=str(tmp_path / "audit.jsonl")), str(tmp_path))
        log.admin("key_created", key_id="key_1", owner="o")
        with pytest.raises(StateError, match="must not be accessible"):
            await log.start()
        await log.close()

    with caplog.at_level(logging.ERROR, logger="securellm_bridge.audit"):
        run(scenario())
    assert "1 audit records were not confirmed written" in caplog.text and "did not start" in caplog.text
    assert delta(before)["errors"] == 1


def test_records_from_another_thread_and_a_large_burst(run: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(AuditConfig(file=str(path)), str(tmp_path))
        await log.start()
        for i in range(10_000):  # one loop iteration: split into several messages
            log.security("rate_limited", key_id=f"key_{i}", limit="rpm")
        thread = threading.Thread(target=lambda: log.admin("key_revoked", key_id="from_thread", owner="o"))
        thread.start()
        thread.join()
        await asyncio.sleep(0.05)  # the thread's record is handed to the loop
        await log.close()

    run(scenario())
    records = lines(path)
    assert len(records) == 10_001 and records[-1]["SECURELLM_KEY_ID"] == "from_thread"
    assert verified(path, tmp_path).ok


@pytest.fixture
def child(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A writer process driven by hand, as the daemon drives it."""
    proc = subprocess.Popen([sys.executable, "-m", process.CHILD_MODULE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=process.child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _init(tmp_path: Path) -> bytes:
    return frame((INIT, {"state_dir": str(tmp_path), "file": str(tmp_path / "audit.jsonl"), "rotate": "daily",
                         "rotate_max_bytes": 1 << 20, "retention_days": 0, "chain_key": None,
                         "log_level": "INFO"}))


def _records(first: int, n: int) -> bytes:
    return frame((RECORDS, first, [("key_created", {"key_id": f"key_{first + i}", "owner": "o"}, time.time(), 5)
                                   for i in range(n)]))


def _read(proc: subprocess.Popen[bytes], frames: Frames) -> tuple[Any, ...]:
    assert proc.stdout is not None
    while True:
        got = frames.feed(os.read(proc.stdout.fileno(), 65536) or b"eof")
        if got:
            return got[0]


def test_the_writer_ignores_sigterm_and_exits_0_at_eof(child: subprocess.Popen[bytes], tmp_path: Path) -> None:
    assert child.stdin is not None
    frames = Frames()
    child.stdin.write(_init(tmp_path))
    child.stdin.flush()
    assert _read(child, frames) == (READY, 0)
    child.send_signal(signal.SIGTERM)  # systemd's stop signals every process of the service
    child.send_signal(signal.SIGINT)
    child.stdin.write(_records(1, 3))
    child.stdin.flush()
    ack = _read(child, frames)
    assert ack[:3] == (ACK, 3, 3) and child.poll() is None
    child.stdin.write(_records(4, 2))
    child.stdin.close()  # EOF: the daemon is done (or died); it writes what it has and exits
    assert child.wait(timeout=30) == 0
    assert [r["SECURELLM_KEY_ID"] for r in lines(tmp_path / "audit.jsonl")] == [f"key_{i}" for i in range(1, 6)]


def test_the_writer_does_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from securellm_bridge.audit import AuditLog\n"
        "from securellm_bridge.config.security import AuditConfig\n"
        "async def main():\n"
        f"    log = AuditLog(AuditConfig(file={str(tmp_path / 'audit.jsonl')!r}), {str(tmp_path)!r})\n"
        "    await log.start()\n"
        "    log.admin('key_created', key_id='key_1', owner='o')\n"
        "    await log.flush()\n"
        "    print(log.writer_pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    env = {**os.environ, "PYTHONPATH": f"{DAEMON_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert daemon.stdout is not None
        writer = int(daemon.stdout.readline())
        assert alive(writer)
        daemon.kill()
        daemon.wait()
        deadline = time.monotonic() + 10
        while alive(writer) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(writer)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert [r["SECURELLM_KEY_ID"] for r in lines(tmp_path / "audit.jsonl")] == ["key_1"]


def test_the_writer_imports_no_daemon_machinery() -> None:
    code = ("import sys, securellm_bridge.audit.child\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'grpc', 'prometheus_client', "
            "'asyncio', 'uvloop', 'sqlite3'}))")
    r = subprocess.run([sys.executable, "-c", code], env=process.child_env(), capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"

"""The audit trail and the daemon's logs in a real journald (scripts/with-journald.sh)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from securellm_bridge._pb import audit_pb2, audit_pb2_grpc
from securellm_bridge.audit import chainkey
from securellm_bridge.audit.events import EVENTS
from securellm_bridge.audit.reader import FileSource, Filter
from securellm_bridge.audit.verify import verify as audit_verify

from .daemon import ROOT, Daemon
from .journal import JOURNAL_DIR, Journal, JournaldDaemon, journald  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
AUDIT = "SYSLOG_IDENTIFIER=securellm-bridge"


def ctl_ok(d: Daemon, *args: str) -> str:
    r = d.ctl(*args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def create_key(d: Daemon, owner: str) -> tuple[str, str]:
    created = json.loads(ctl_ok(d, "keys", "create", "--owner", owner, "--json"))
    return created["id"], created["key"]


def restart(d: Daemon) -> None:
    d.stop()
    (d.workdir / "notify.sock").unlink()
    d.start()


def verify(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return d.ctl("audit", "verify", "--key-file", str(d.state_dir / "audit.key"), *args)


def test_daemon_under_a_journal_stream_logs_structured_fields(journald: Journal, tmp_path: Path) -> None:
    d = JournaldDaemon(tmp_path)
    try:
        d.start()
        key_id, _ = create_key(d, "alice")
        found = journald.wait_for("SYSLOG_IDENTIFIER=securellm-bridged", f"SECURELLM_KEY_ID={key_id}")
        assert found[0]["MESSAGE"] == f"API key {key_id} created for owner alice"
        assert found[0]["PRIORITY"] == "6" and found[0]["_PID"] == str(d.proc.pid)  # type: ignore[union-attr]
        ready = journald.wait_for("SYSLOG_IDENTIFIER=securellm-bridged", where=lambda r: "ready" in r["MESSAGE"])
        assert ready[0]["_TRANSPORT"] == "journal"
    finally:
        d.stop()


def test_key_records_read_back_with_fields_and_no_secret(journald: Journal, daemon: Daemon) -> None:
    key_id, secret = create_key(daemon, "alice")
    ctl_ok(daemon, "keys", "revoke", key_id)
    created = journald.wait_for(AUDIT, "SECURELLM_EVENT=key_created", f"SECURELLM_KEY_ID={key_id}")[0]
    assert created["MESSAGE_ID"] == EVENTS["key_created"].message_id and created["PRIORITY"] == "5"
    assert created["SECURELLM_OWNER"] == "alice" and created["MESSAGE"] == f"API key {key_id} created for owner alice"
    assert created["SECURELLM_SEQ"] == "1" and re.fullmatch(r"[0-9a-f]{64}", created["SECURELLM_CHAIN"])
    assert created["SECURELLM_TIME"].endswith("Z")
    revoked = journald.wait_for(AUDIT, "SECURELLM_EVENT=key_revoked", f"SECURELLM_KEY_ID={key_id}")[0]
    assert revoked["SECURELLM_SEQ"] == "2" and revoked["MESSAGE_ID"] == EVENTS["key_revoked"].message_id
    daemon.stop()
    everything = json.dumps(journald.records())
    assert key_id in everything
    assert secret not in everything and secret[8:] not in everything
    for path in daemon.state_dir.iterdir():
        if path.is_file():
            assert secret[8:].encode() not in path.read_bytes(), path


def test_verify_passes_then_catches_a_forged_record(journald: Journal, daemon: Daemon) -> None:
    for owner in ("alice", "bob"):
        create_key(daemon, owner)
    journald.wait_for(AUDIT, "SECURELLM_EVENT=key_created", count=2)
    since = f"@{journald.since:.6f}"
    r = verify(daemon, "--since", since)
    assert r.returncode == 0 and r.stdout.startswith("OK: 2 records verified, seq 1..2"), (r.stdout, r.stderr)
    r = daemon.ctl("audit", "verify", "--since", since, "--config", str(daemon.config_path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["records"] == 2, r.stderr
    # A second writer sends a record that looks like the next one.
    forger = ("from systemd import journal; journal.send('API key key_x revoked', SYSLOG_IDENTIFIER="
              "'securellm-bridge', MESSAGE_ID='" + EVENTS["key_revoked"].message_id + "', PRIORITY='5', "
              "SECURELLM_EVENT='key_revoked', SECURELLM_SEQ='3', SECURELLM_KEY_ID='key_x', "
              "SECURELLM_TIME='2030-01-01T00:00:00.000000Z', SECURELLM_CHAIN='" + "ab" * 32 + "')")
    subprocess.run([sys.executable, "-c", forger], check=True)
    journald.wait_for(AUDIT, "SECURELLM_KEY_ID=key_x")
    create_key(daemon, "carol")
    journald.wait_for(AUDIT, "SECURELLM_EVENT=key_created", count=3)
    r = verify(daemon, "--since", since)
    assert r.returncode == 1, r.stdout
    assert "FAILED: record seq 3" in r.stdout and "forged" in r.stdout
    problem = json.loads(verify(daemon, "--since", since, "--json").stdout)["problem"]
    assert problem["kind"] == "modified" and problem["seq"] == 3


def outage_scenario(name: str, state_dir: Path, owner: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "tests.audit_outage",
                        name, str(state_dir), owner], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_journald_unavailable_falls_back_to_file_and_verify_sees_the_gap(journald: Journal, tmp_path: Path) -> None:
    owner = f"outage-{os.getpid()}"
    r = outage_scenario("outage", tmp_path, owner)
    assert json.loads(r.stdout.splitlines()[-1]) == {"journal": 2, "file": 2, "fallback": 2, "errors": 0}
    assert "journald is unavailable" in r.stderr and "available again" in r.stderr
    fallback = tmp_path / "audit-fallback.jsonl"
    assert [json.loads(x)["SECURELLM_SEQ"] for x in fallback.read_text().splitlines()] == ["2", "3"]
    in_journal = journald.wait_for(AUDIT, f"SECURELLM_OWNER={owner}", count=2)
    assert [x["SECURELLM_SEQ"] for x in in_journal] == ["1", "4"]
    key = ["--key-file", str(tmp_path / "audit.key")]
    base = [sys.executable, "-m", "securellmctl", "audit", "verify", "--since", f"@{journald.since:.6f}", *key]
    r = subprocess.run([*base, "--journal-dir", JOURNAL_DIR], capture_output=True, text=True)
    assert r.returncode == 1 and "sequence gap: seq 2..3 missing between seq 1 and seq 4" in r.stdout, r.stdout
    r = subprocess.run([*base, "--file", str(fallback)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK: 2 records verified, seq 2..3" in r.stdout, r.stdout
    r = subprocess.run([*base, "--journal-dir", JOURNAL_DIR, "--file", str(fallback)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK: 4 records verified, seq 1..4" in r.stdout, r.stdout


def test_stuck_journald_freezes_nothing_and_records_go_to_the_fallback_file(journald: Journal,
                                                                           tmp_path: Path) -> None:
    owner = f"stuck-{os.getpid()}"
    r = outage_scenario("stuck", tmp_path, owner)  # a frozen process would time out here
    result = json.loads(r.stdout.splitlines()[-1])
    stuck = result["stuck"]
    assert "did not take a record within 2 s" in r.stderr
    assert stuck["errors"] == 0 and stuck["fallback"] >= 1 and stuck["journal"] + stuck["fallback"] == 200
    assert stuck["file"] == stuck["fallback"]
    fallback = [json.loads(x) for x in (tmp_path / "audit-fallback.jsonl").read_text().splitlines()]
    assert [int(x["SECURELLM_SEQ"]) for x in fallback] == list(range(int(stuck["journal"]) + 1, 201))
    assert result["last_seq"] == 201
    after = journald.wait_for(AUDIT, f"SECURELLM_OWNER={owner}")
    assert [(x["SECURELLM_SEQ"], x["SECURELLM_KEY_ID"]) for x in after] == [("201", "key_after")]
    entries = FileSource([tmp_path / "audit-fallback.jsonl"]).entries(Filter())
    report = audit_verify(entries, chainkey.read_key_file(tmp_path / "audit.key"), source="fallback")
    assert report.ok and report.records == len(fallback), report


def test_seq_continues_across_restart_and_sigkill(journald: Journal, make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.start()
    create_key(d, "one")
    restart(d)
    create_key(d, "two")
    journald.wait_for(AUDIT, "SECURELLM_EVENT=key_created", count=2)
    d.signal(signal.SIGKILL)
    d.wait()
    restart(d)
    create_key(d, "three")
    records = journald.wait_for(AUDIT, "SECURELLM_EVENT=key_created", count=3)
    assert sorted({int(x["SECURELLM_SEQ"]) for x in records}) == [1, 2, 3]
    assert [x["SECURELLM_OWNER"] for x in records][-1] == "three"
    r = verify(d, "--since", f"@{journald.since:.6f}")
    assert r.returncode == 0 and "seq 1..3" in r.stdout, r.stdout
    assert json.loads(ctl_ok(d, "status", "--json"))["counts"]["audit_seq"] == "3"


def test_verify_file_sink_detects_deleted_modified_and_reordered(journald: Journal, make_daemon: Callable[..., Daemon],
                                                                  tmp_path: Path) -> None:
    d = make_daemon()
    audit_file = tmp_path / "audit" / "audit.jsonl"
    d.write_config(d.updated(security={**d.config["security"], "audit": {"file": str(audit_file)}}))
    d.start()
    ids = [create_key(d, f"user{i}")[0] for i in range(4)]
    ctl_ok(d, "keys", "revoke", ids[0])
    d.stop()
    good = audit_file.read_text().splitlines()
    assert len(good) == 5
    r = verify(d, "--file", str(audit_file))
    assert r.returncode == 0 and r.stdout.startswith("OK: 5 records verified, seq 1..5"), r.stdout

    def check(lines: list[str], expected: str) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_text("".join(x + "\n" for x in lines))
        r = verify(d, "--file", str(bad))
        assert r.returncode == 1 and expected in r.stdout, r.stdout

    check(good[:2] + good[3:], "sequence gap: seq 3 missing between seq 2 and seq 4")
    modified = json.loads(good[1])
    modified["SECURELLM_OWNER"] = "mallory"
    check([good[0], json.dumps(modified), *good[2:]], "record seq 2")
    check([*good[:2], good[3], good[2], good[4]], "reordered: record seq 3")


def test_config_reload_records_name_keys_never_values(journald: Journal, daemon: Daemon) -> None:
    secret_key = "S3cr3t" * 8
    daemon.write_config(daemon.updated(server={"drain_timeout_seconds": 7},
                                       security={**daemon.config["security"], "audit": {"chain_key": secret_key}}))
    ctl_ok(daemon, "reload")
    applied = journald.wait_for(AUDIT, "SECURELLM_EVENT=config_reload")[0]
    assert applied["SECURELLM_RESULT"] == "applied" and applied["PRIORITY"] == "5"
    assert applied["SECURELLM_CHANGED"] == "security.audit.chain_key,server.drain_timeout_seconds"
    assert applied["SECURELLM_RESTART_REQUIRED"] == "security.audit.chain_key"
    daemon.write_config(daemon.updated(control={"socket_mode": "0666"}))
    r = daemon.ctl("reload")
    assert r.returncode == 1
    failed = journald.wait_for(AUDIT, "SECURELLM_EVENT=config_reload", "SECURELLM_RESULT=failed")[0]
    assert failed["PRIORITY"] == "3" and failed["SECURELLM_PROBLEMS"] == "control.socket_mode"
    everything = json.dumps(journald.records(AUDIT))
    assert secret_key not in everything and "0666" not in everything


def _lines_of(proc: subprocess.Popen[str]) -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_query_and_tail(journald: Journal, daemon: Daemon) -> None:
    alice1, _ = create_key(daemon, "alice")
    create_key(daemon, "bob")
    alice2, _ = create_key(daemon, "alice")
    ctl_ok(daemon, "keys", "revoke", alice1)
    journald.wait_for(AUDIT, "SECURELLM_EVENT=key_revoked")

    since = f"@{journald.since:.6f}"
    everything = json.loads(ctl_ok(daemon, "audit", "query", "--since", since, "--json"))
    assert [(r["seq"], r["event"]) for r in everything] == [
        (1, "key_created"), (2, "key_created"), (3, "key_created"), (4, "key_revoked")]
    assert everything[0]["fields"] == {"key_id": alice1, "owner": "alice"}
    assert everything[0]["message_id"] == EVENTS["key_created"].message_id and everything[0]["priority"] == 5
    assert len(json.loads(ctl_ok(daemon, "audit", "query", "--since", since, "--event", "key_created",
                                 "--json"))) == 3
    assert [r["event"] for r in json.loads(ctl_ok(daemon, "audit", "query", "--key", alice1, "--json"))] == [
        "key_created", "key_revoked"]
    assert json.loads(ctl_ok(daemon, "audit", "query", "--since", "@4102444800", "--json")) == []
    table = ctl_ok(daemon, "audit", "query", "--limit", "2")
    assert table.splitlines()[0].split() == ["TIME", "SEQ", "EVENT", "KEY", "MODEL", "STATUS", "MESSAGE"]
    assert len(table.splitlines()) == 3 and alice2 in table and alice1 in table
    r = daemon.ctl("audit", "query", "--limit", "2")
    assert "more records match" in r.stderr

    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        start = Timestamp()
        start.FromNanoseconds(int(journald.since * 1e9))
        resp = audit_pb2_grpc.AuditStub(channel).Query(
            audit_pb2.QueryAuditRequest(since=start, limit=2, filter=audit_pb2.AuditFilter(event="key_created")),
            timeout=30)
    assert [r.seq for r in resp.records] == [2, 3] and resp.truncated

    tail = [json.loads(x) for x in ctl_ok(daemon, "audit", "tail", "-n", "2", "--json").splitlines()]
    assert [r["seq"] for r in tail] == [3, 4]
    follower = subprocess.Popen([sys.executable, "-m", "securellmctl", "--socket", daemon.socket, "audit", "tail",
                                 "-f", "-n", "1", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        lines = _lines_of(follower)
        assert json.loads(lines.get(timeout=30))["seq"] == 4
        bob2, _ = create_key(daemon, "bob")
        new = json.loads(lines.get(timeout=30))
        assert (new["seq"], new["event"], new["fields"]["key_id"]) == (5, "key_created", bob2)
    finally:
        follower.terminate()
        follower.wait(timeout=10)

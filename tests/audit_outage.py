"""Audit records while journald is away or stuck, in this process only; prints what happened.

Run by tests/test_audit_journal.py as ``unshare --mount --propagation private python -m
tests.audit_outage SCENARIO STATE_DIR OWNER``: the mounts below hide the harness's journald
socket from this process only, while journald keeps running for everyone else.

``outage``:
1. seq 1 goes to journald;
2. an empty tmpfs over /run/systemd/journal: no socket, ``journal.send`` would drop the
   record silently; seq 2 must go to the fallback file;
3. a stale socket file there (nobody listens): seq 3 must go to the fallback file;
4. the tmpfs unmounted: seq 4 goes to journald again.

``stuck``: a socket there that nobody reads, as when journald hangs: once its queue is full
(about 10 datagrams), sends time out and the records must go to the fallback file. (With
systemd-python's ``journal.send`` this froze the whole process.) Then, with the real socket
back, a new AuditLog on the same state dir writes one more record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys

from prometheus_client import REGISTRY

from securellm_bridge.audit import AuditLog
from securellm_bridge.config.security import AuditConfig

JOURNAL_RUN = "/run/systemd/journal"


def counters() -> dict[str, float]:
    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return {"journal": get("securellm_audit_records_total", sink="journal"),
            "file": get("securellm_audit_records_total", sink="file"),
            "fallback": get("securellm_audit_fallback_total"), "errors": get("securellm_audit_errors_total")}


async def outage(state_dir: str, owner: str) -> None:
    log = AuditLog(AuditConfig(), state_dir)
    await log.start()
    log.admin("key_created", key_id="key_1", owner=owner)
    await log.flush()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", JOURNAL_RUN], check=True)
    log.admin("key_created", key_id="key_2", owner=owner)
    await log.flush()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(f"{JOURNAL_RUN}/socket")
    stale.close()
    log.admin("key_created", key_id="key_3", owner=owner)
    await log.flush()
    subprocess.run(["umount", JOURNAL_RUN], check=True)
    log.admin("key_created", key_id="key_4", owner=owner)
    await log.close()
    print(json.dumps(counters()))


async def stuck(state_dir: str, owner: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", JOURNAL_RUN], check=True)
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(f"{JOURNAL_RUN}/socket")  # kept open and never read, to the end of the process
    log = AuditLog(AuditConfig(), state_dir)
    await log.start()
    for i in range(200):
        log.admin("key_created", key_id=f"key_{i}", owner=owner)
    await log.close()
    when_stuck = counters()
    subprocess.run(["umount", "--lazy", JOURNAL_RUN], check=True)
    again = AuditLog(AuditConfig(), state_dir)
    await again.start()
    again.admin("key_created", key_id="key_after", owner=owner)
    await again.close()
    print(json.dumps({"stuck": when_stuck, "last_seq": again.last_seq}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    scenario = {"outage": outage, "stuck": stuck}[sys.argv[1]]
    asyncio.run(scenario(sys.argv[2], sys.argv[3]))

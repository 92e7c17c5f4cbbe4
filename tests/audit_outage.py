"""Write audit records while journald's socket goes away and comes back; print the counters.

Run by tests/test_audit_journal.py as
``unshare --mount --propagation private python -m tests.audit_outage STATE_DIR OWNER``, so
that the mounts below hide the socket from this process only (journald keeps running):

1. seq 1 goes to journald;
2. an empty tmpfs over /run/systemd/journal: no socket, ``journal.send`` would drop the
   record silently; seq 2 must go to the fallback file;
3. a stale socket file there (nobody listens): seq 3 must go to the fallback file;
4. the tmpfs unmounted: seq 4 goes to journald again.
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


async def main(state_dir: str, owner: str) -> None:
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1], sys.argv[2]))

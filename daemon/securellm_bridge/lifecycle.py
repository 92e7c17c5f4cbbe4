"""The systemd notify protocol: READY, STATUS, RELOADING, STOPPING and the watchdog.

Without ``$NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same outside
systemd. The watchdog ping is sent from a task on the event loop, so a hung loop stops the
pings and systemd's ``WatchdogSec=`` kills and restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from systemd import daemon as sd_daemon

log = logging.getLogger(__name__)


class Notifier:
    """Thin wrapper over ``sd_notify``; remembers nothing but whether systemd listens."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> None:
        if self.enabled:
            sd_daemon.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=Reloading configuration")

    def stopping(self, status: str = "Stopping: draining in-flight work") -> None:
        self.send("STOPPING=1", f"STATUS={status}")


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is enabled for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """Ping ``WATCHDOG=1`` every ``interval`` seconds for as long as the loop runs."""
    log.info("watchdog enabled: pinging every %.3f s", interval)
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)

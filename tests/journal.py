"""The private journald of scripts/with-journald.sh: reading it, and journal streams for children.

``scripts/test.sh`` runs the whole suite under ``scripts/with-journald.sh``, which starts a
real ``systemd-journald`` in a private mount namespace. Tests that need it take the
``journald`` fixture (import it into the test module): outside the harness it skips with the
reason, and under CI (``$CI`` set) it fails instead, so CI can never skip these tests.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from .daemon import Daemon, NotifyListener

JOURNAL_DIR = "/run/log/journal"
SOCKET = "/run/systemd/journal/socket"
STDOUT_SOCKET = "/run/systemd/journal/stdout"
#: Set by scripts/with-journald.sh inside its namespace.
HARNESS_ENV = "SECURELLM_JOURNALD_NS"


def journald_running() -> bool:
    """True when this process runs inside the harness and its journald accepts records."""
    if os.environ.get(HARNESS_ENV) != "1":
        return False
    try:
        if not stat.S_ISSOCK(os.stat(SOCKET).st_mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(SOCKET)
    except OSError:
        return False
    return True


def read(*matches: str, since: float | None = None, directory: str = JOURNAL_DIR) -> list[dict[str, str]]:
    """Entries as ``journalctl -o json`` prints them; ``matches`` are ``FIELD=value`` terms."""
    cmd = ["journalctl", "--directory", directory, "--output", "json", "--all", "--no-pager"]
    if since is not None:
        cmd += ["--since", f"@{since:.6f}"]
    r = subprocess.run([*cmd, *matches], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 and "No entries" not in r.stdout + r.stderr:
        raise AssertionError(f"journalctl failed ({r.returncode}): {r.stderr}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@dataclass
class Journal:
    """The harness's journal, seen from the start of one test."""

    since: float = field(default_factory=time.time)

    def records(self, *matches: str) -> list[dict[str, str]]:
        return read(*matches, since=self.since)

    def wait_for(self, *matches: str, count: int = 1, timeout: float = 15.0,
                 where: Callable[[dict[str, str]], bool] = lambda _: True) -> list[dict[str, str]]:
        """The matching entries once there are at least ``count`` (journald stores asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records(*matches) if where(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} journal entries matching {matches} expected, found {len(found)}")
            time.sleep(0.05)


@pytest.fixture
def journald() -> Journal:
    if not journald_running():
        if os.environ.get("CI"):
            pytest.fail("journald is not running, but CI must run these tests: run the suite with "
                        "scripts/test.sh (it uses scripts/with-journald.sh)")
        pytest.skip("needs the private journald: run under scripts/with-journald.sh (scripts/test.sh does)")
    return Journal()


def journal_stream(identifier: str, priority: int = 6) -> tuple[socket.socket, str]:
    """Connect to journald's stdout socket as systemd does for a service's stdout/stderr.

    Returns the connected socket (give it to a child as stdout and stderr) and the value of
    ``JOURNAL_STREAM`` ("DEV:INODE" of that socket), by which the child recognizes it.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(STDOUT_SOCKET)
    # identifier, unit id, priority, level prefix, forward to syslog, to kmsg, to console
    s.sendall(f"{identifier}\n\n{priority}\n0\n0\n0\n0\n".encode())
    s.shutdown(socket.SHUT_RD)
    st = os.fstat(s.fileno())
    return s, f"{st.st_dev}:{st.st_ino}"


class JournaldDaemon(Daemon):
    """A daemon whose stdout and stderr are a journal stream, as under systemd."""

    _stream: socket.socket | None = None

    def start(self, *, wait_ready: bool = True, on_notify: Callable[[dict[str, str]], None] | None = None) -> None:
        self.notify = NotifyListener(self.workdir / "notify.sock", on_notify)
        self._stream, stream_id = journal_stream("securellm-bridged")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                                 "JOURNAL_STREAM", "LISTEN_FDS")}
        env.update(NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1", JOURNAL_STREAM=stream_id, **self.env)
        self.proc = subprocess.Popen([sys.executable, "-m", "securellm_bridge", "--config", str(self.config_path)],
                                     env=env, stdin=subprocess.DEVNULL, stdout=self._stream.fileno(), stderr=self._stream.fileno(),
                                     text=True)
        if wait_ready:
            self.wait_ready()

    def stop(self) -> None:
        super().stop()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

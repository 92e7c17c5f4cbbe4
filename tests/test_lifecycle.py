"""The daemon's life under the systemd notify protocol, with a real process and socket."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from .daemon import Daemon

pytestmark = pytest.mark.slow


def _can_connect(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_ready_only_after_control_socket_accepts(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    seen: dict[str, bool] = {}

    def on_notify(msg: dict[str, str]) -> None:
        if msg.get("READY") == "1" and "connectable" not in seen:
            seen["connectable"] = _can_connect(d.socket)

    d.start(on_notify=on_notify)
    assert seen == {"connectable": True}
    statuses = [m["STATUS"] for _, m in d.notify.messages if "STATUS" in m]  # type: ignore[union-attr]
    assert any("Opening state database" in s for s in statuses)
    assert statuses[-1].startswith("Ready: serving 127.0.0.1:") and f"unix:{d.socket}" in statuses[-1]


def test_watchdog_pings_when_enabled(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(env={"WATCHDOG_USEC": "200000"})
    d.start()
    assert d.notify is not None
    first = d.notify.wait_for("WATCHDOG", "1")
    d.notify.wait_for("WATCHDOG", "1", after=first + 1, timeout=5)


def test_no_watchdog_pings_without_watchdog_usec(daemon: Daemon) -> None:
    time.sleep(0.5)
    assert daemon.notify is not None and daemon.notify.count("WATCHDOG") == 0


def test_sighup_sends_reloading_then_ready_and_applies(daemon: Daemon) -> None:
    assert daemon.notify is not None
    daemon.write_config(daemon.updated(log={"level": "warning"}))
    start = len(daemon.notify.messages)
    daemon.signal(signal.SIGHUP)
    i = daemon.notify.wait_for("RELOADING", "1", after=start)
    msg = daemon.notify.messages[i][1]
    assert int(msg["MONOTONIC_USEC"]) > 0
    daemon.notify.wait_for("READY", "1", after=i + 1)
    daemon.wait_log("configuration reloaded")
    # The new level is in force: an info-level record is no longer written.
    assert daemon.ctl("keys", "create", "--owner", "after-reload").returncode == 0
    daemon.stop()
    assert "created for owner after-reload" not in daemon.log()


def test_sighup_with_broken_config_keeps_old(daemon: Daemon) -> None:
    assert daemon.notify is not None
    daemon.write_config(daemon.updated(control={"socket_mode": "0777"}, bogus={"x": 1}))
    start = len(daemon.notify.messages)
    daemon.signal(signal.SIGHUP)
    i = daemon.notify.wait_for("RELOADING", "1", after=start)
    daemon.notify.wait_for("READY", "1", after=i + 1)
    log = daemon.wait_log("reload failed; keeping the previous configuration")
    assert "control.socket_mode" in log and "bogus: unknown key" in log
    # The old config is still in force and the daemon still serves.
    r = daemon.ctl("status", "--json")
    assert r.returncode == 0, r.stderr
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_sigterm_sends_stopping_and_exits_zero(daemon: Daemon) -> None:
    assert daemon.notify is not None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    daemon.notify.wait_for("STOPPING", "1")
    assert not Path(daemon.socket).exists()


def test_sigint_exits_zero(daemon: Daemon) -> None:
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0


def test_runs_without_notify_socket(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    d = make_daemon()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen([sys.executable, "-m", "securellm_bridge", "--config", str(d.config_path)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _can_connect(d.socket):
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert d.ctl("status").returncode == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("section, values, key", [
    ("control", {"socket_mode": "rw"}, "control.socket_mode"),
    ("server", {"listen": 8443}, "server.listen"),
    ("log", {"level": "verbose"}, "log.level"),
    ("state", {"nonsense": True}, "state.nonsense"),
])
def test_bad_config_exits_2_naming_key(make_daemon: Callable[..., Daemon], section: str,
                                       values: dict[str, object], key: str) -> None:
    d = make_daemon()
    d.write_config(d.updated(**{section: values}))
    d.start(wait_ready=False)
    assert d.wait() == 2
    log = d.log()
    assert str(d.config_path) in log and key in log
    assert "Traceback" not in log


def test_missing_config_file_exits_2(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.config_path.unlink()
    d.start(wait_ready=False)
    assert d.wait() == 2
    assert "does not exist" in d.log()


def test_unusable_state_dir_exits_1_with_message(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    d = make_daemon()
    d.write_config(d.updated(state={"dir": str(blocker / "state")}))
    d.start(wait_ready=False)
    assert d.wait() == 1
    assert "cannot open state database" in d.log()
    assert "Traceback" not in d.log()

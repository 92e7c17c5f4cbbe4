"""Run the real daemon as a subprocess, with a notify socket the test owns."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from securellmctl.certs import CertSet, init_dir

from . import tomlw

ROOT = Path(__file__).resolve().parent.parent


class NotifyListener:
    """Binds a datagram socket for ``$NOTIFY_SOCKET`` and records every message."""

    def __init__(self, path: Path, on_message: Callable[[dict[str, str]], None] | None = None) -> None:
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._on_message = on_message
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if self._on_message is not None:
                self._on_message(fields)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 15.0) -> int:
        """Index of the first message at or after ``after`` that has ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (_, m) in enumerate(self.messages[after:], start=after):
                    if key in m and (value is None or m[key] == value):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {key}={value} notification; got {[m for _, m in self.messages]}")
                self._cond.wait(left)

    def count(self, key: str) -> int:
        with self._cond:
            return sum(1 for _, m in self.messages if key in m)

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        self._thread.join(timeout=2)


def base_config(run_dir: Path, state_dir: Path, certs: CertSet) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "drain_timeout_seconds": 5},
        "control": {"socket": str(run_dir / "control.sock")},
        "state": {"dir": str(state_dir)},
        "log": {"level": "debug"},
        "security": {"tls": {"cert_path": str(certs.server_cert), "key_path": str(certs.server_key),
                             "client_ca_path": str(certs.ca_cert)}},
    }


class Daemon:
    """One daemon process with its own config, state dir and control socket."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        # The run dir is world-traversable so that tests can connect as other users.
        self.run_dir = Path(tempfile.mkdtemp(prefix="sllm-run-", dir="/tmp"))
        os.chmod(self.run_dir, 0o755)
        self.state_dir = workdir / "state"
        self.config_path = workdir / "config.toml"
        self.certs = init_dir(workdir / "certs")
        self.config = config if config is not None else base_config(self.run_dir, self.state_dir, self.certs)
        self.write_config(self.config)
        self.env = dict(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.notify: NotifyListener | None = None
        self.log_path = workdir / "daemon.log"

    @property
    def socket(self) -> str:
        return str(self.config["control"]["socket"])

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else tomlw.dumps(config)
        self.config_path.write_text(text)

    def updated(self, **sections: dict[str, Any]) -> dict[str, Any]:
        cfg = copy.deepcopy(self.config)
        for name, values in sections.items():
            cfg.setdefault(name, {}).update(values)
        return cfg

    def start(self, *, wait_ready: bool = True, on_notify: Callable[[dict[str, str]], None] | None = None) -> None:
        self.notify = NotifyListener(self.workdir / "notify.sock", on_notify)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                                 "JOURNAL_STREAM", "LISTEN_FDS")}
        env.update(NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "securellm_bridge", "--config", str(self.config_path)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.notify.wait_for("READY", "1", timeout=0.1)
                return
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"daemon not ready (exit {self.proc.poll()}):\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains ``text`` (records reach it through a queue thread)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the daemon log:\n{log}")
            time.sleep(0.02)
        return log

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def ctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", "securellmctl", "--socket", self.socket, *args],
                              capture_output=True, text=True, env=full_env, timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if getattr(self, "_log", None):
            self._log.close()

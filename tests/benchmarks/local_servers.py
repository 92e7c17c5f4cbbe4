"""The servers ``bench_local`` compares: llama-server started on its own (:class:`Direct`) and
the bridge daemons (:class:`Bridge`) that start it on demand."""

from __future__ import annotations

import asyncio
import math
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .bridges import api_key_target, stop_daemons
from .loadgen import Target, perf
from .procfs import cmdline

HEALTH_POLL = 0.010  # the direct baseline's /health poll (the daemon polls every 50 ms)
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def server_argv(binary: Path, model: Path, alias: str, port: int, extra: list[str]) -> list[str]:
    """What ``LlamaCppBackend._launch`` runs for the models of ``local_config`` (ctx 256,
    gpu_layers 2, parallel 1); checked against the daemon's own child in ``check_flags``."""
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--alias", alias,
            "-c", "256", "-ngl", "2", "-np", "1", "--metrics", "--no-webui", "--log-colors", "off", "-lv", "4",
            *extra]


@dataclass
class Direct:
    """A llama-server of our own: the same binary and flags, a known key."""

    proc: subprocess.Popen[bytes]
    target: Target
    spawned: float
    healthy: float = 0.0

    @classmethod
    def spawn(cls, binary: Path, model: Path, alias: str, extra: list[str], log: Path) -> "Direct":
        from securellm_bridge.local.backends.children import child_environment
        from tests.llama import free_port

        port = free_port()
        key = "bench-" + os.urandom(16).hex()
        env = child_environment({"LLAMA_API_KEY": key})
        with log.open("ab") as out:
            t0 = perf()
            proc = subprocess.Popen(server_argv(binary, model, alias, port, extra), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(proc, Target(f"direct:{alias}", "127.0.0.1", port, None, (("Authorization", f"Bearer {key}"),)),
                   t0)

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\nConnection: close\r\n\r\n".encode()
        deadline = perf() + timeout
        while perf() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.target.port)
                try:
                    writer.write(request)
                    line = await reader.readline()
                finally:
                    writer.close()
                if line.startswith(b"HTTP/1.1 200"):
                    self.healthy = perf()
                    return self.healthy
            except OSError:
                pass
            await asyncio.sleep(HEALTH_POLL)
        raise RuntimeError("llama-server not healthy in time")

    def stop(self) -> float:
        """SIGTERM, wait for the exit (a pidfd, not ``Popen.wait``'s polling); the seconds that took."""
        if self.proc.poll() is not None:
            return 0.0
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            t0 = perf()
            self.proc.send_signal(signal.SIGTERM)
            exited = select.select([pidfd], [], [], 15)[0]
            took = perf() - t0
        finally:
            os.close(pidfd)
        if not exited:
            self.proc.kill()
        self.proc.wait()
        return took


# ---------------------------------------------------------------------------------- bridges

@dataclass
class Bridge:
    daemon: Any  # tests.daemon.Daemon
    target: Target
    #: whether the daemon logs at info or debug: the "ready" and "unloaded" lines time the loads
    timed_log: bool = True

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid  # type: ignore[no-any-return]

    def log_time(self, *texts: str, after: float = 0.0, timeout: float = 10.0) -> float:
        """Wall-clock time (``time.time()``, to the millisecond) of the first log line holding all
        ``texts`` at or after ``after``; nan when the daemon does not log at info."""
        if not self.timed_log:
            return math.nan
        deadline = time.monotonic() + timeout
        while True:
            for line in self.daemon.log().splitlines():
                m = _LOG_TIME.match(line)
                if m and all(text in line for text in texts):
                    at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if at >= after - 0.002:
                        return at
            if time.monotonic() > deadline:
                raise RuntimeError(f"{texts!r} not in the daemon log after {after}")
            time.sleep(0.02)


def start_daemons(tmp: Path, configs: dict[str, dict[str, Any]], log_level: str) -> dict[str, Bridge]:
    """One daemon per config (``[local]``, ``[backends]``, ``[vram]`` tables), started together."""
    from tests.daemon import Daemon, base_config

    daemons: dict[str, Any] = {}
    for name, extra in configs.items():
        workdir = tmp / name
        workdir.mkdir()
        d = Daemon(workdir, env={"PYTHONPATH": os.environ["PYTHONPATH"]})
        cfg = base_config(d.run_dir, d.state_dir, d.certs)
        cfg["log"] = {"level": log_level}
        cfg["security"]["auth"] = {"require_api_key": True}
        cfg.update(extra)
        d.config = cfg
        d.write_config(cfg)
        daemons[name] = d
    bridges: dict[str, Bridge] = {}
    try:
        for d in daemons.values():
            d.start(wait_ready=False)
        for name, d in daemons.items():
            d.wait_ready(timeout=60)
            bridges[name] = Bridge(d, api_key_target(d, name, d.certs), log_level in ("info", "debug"))
    except BaseException:
        stop_daemons(daemons.values())
        raise
    return bridges


def check_flags(bridge: Bridge, alias: str, binary: Path, model: Path, extra: list[str]) -> str | None:
    """None when the daemon's llama-server for ``alias`` runs exactly ``server_argv`` (but the port)."""
    from tests.local_models import llama_servers

    pid = llama_servers(parent=bridge.pid).get(alias)
    if pid is None:
        return f"no llama-server for {alias} under the daemon"
    argv = cmdline(pid)
    mine = server_argv(binary, model, alias, 0, extra)
    strip = lambda xs: [x for i, x in enumerate(xs) if i == 0 or xs[i - 1] != "--port"]  # noqa: E731
    return None if strip(argv) == strip(mine) else f"flags differ: daemon {argv} vs direct {mine}"

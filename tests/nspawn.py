"""A throwaway systemd (PID 1) in ``systemd-nspawn``, to test the unit file for real.

The container's root is an overlay of the host's ``/`` whose upper layer is a tmpfs, so
whatever the test or the container writes (files, users, chmod) vanishes with it and the
host is never touched. ``/dev`` is an empty opaque directory, which nspawn fills itself.

    with Container(tmp_path) as c:
        c.write("/etc/systemd/system/x.service", text)      # before boot
        c.boot()
        c.run("systemctl", "start", "x")                     # nsenter into the container
        c.show("x", "ActiveState")                           # {"ActiveState": "active"}

Needs root, ``systemd-nspawn`` and ``nsenter``. ``close()`` (or leaving the ``with``)
always powers the container off, unmounts both layers and removes nspawn's leftovers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

BOOT_TIMEOUT = 45.0
POWEROFF_TIMEOUT = 20.0
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")


def available() -> str | None:
    """Why a container cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/lib/systemd/systemd").exists():
        return "no systemd to boot"
    return None


class Container:
    def __init__(self, workdir: Path, binds: tuple[Path, ...] = ()) -> None:
        #: Host directories shown read-only at the same path (nspawn puts a tmpfs on /tmp).
        self.binds = binds
        self.name = f"sllm-{uuid.uuid4().hex[:8]}"
        self.base = workdir / "nspawn"
        self.layers = self.base / "layers"
        self.root = self.base / "root"
        self.console_path = self.base / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._mounted: list[Path] = []

    def __enter__(self) -> Self:
        self.mount()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- file system --------------------------------------------------------------------

    def mount(self) -> None:
        self.layers.mkdir(parents=True)
        self.root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(self.layers)], check=True)
        self._mounted.append(self.layers)
        upper, work = self.layers / "upper", self.layers / "work"
        (upper / "dev").mkdir(parents=True)
        work.mkdir()
        os.setxattr(upper / "dev", "trusted.overlay.opaque", b"y")
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/,upperdir={upper},workdir={work}", str(self.root)], check=True)
        self._mounted.append(self.root)

    def path(self, inside: str) -> Path:
        """Where the container's absolute path ``inside`` lies on the host (under the overlay)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, content: str | bytes, mode: int = 0o644) -> Path:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        os.chmod(target, mode)
        return target

    # -- life cycle ---------------------------------------------------------------------

    def boot(self, init_args: tuple[str, ...] = (), timeout: float = BOOT_TIMEOUT) -> None:
        """Start the container and wait until its systemd finished booting."""
        with open(self.console_path, "wb") as console:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), f"--machine={self.name}", "--register=no",
                 "--keep-unit", "--private-network", "--quiet", *(f"--bind-ro={d}" for d in self.binds),
                 "-b", "--", *init_args],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self._check_alive(deadline)
            self.leader = self._find_leader()
            time.sleep(0.1)
        while True:
            self._check_alive(deadline)
            state = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.3)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"container did not boot in time:\n{self.console()}")

    def _find_leader(self) -> int | None:
        """PID (on the host) of the container's PID 1: a descendant of nspawn whose NSpid ends in 1."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            nspid = fields.get("NSpid", "").split()
            if len(nspid) >= 2 and nspid[-1] == "1" and self._descends_from_nspawn(int(entry.name)):
                return int(entry.name)
        return None

    def _descends_from_nspawn(self, pid: int) -> bool:
        assert self.proc is not None
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        return False

    def console(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    # -- inside the container -----------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in all of the container's namespaces."""
        assert self.leader is not None, "container not booted"
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *cmd],
                              check=False, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, unit: str, timeout: float = 20.0, **expected: str) -> dict[str, str]:
        """Poll ``systemctl show`` until every property has its expected value."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.show(unit, *expected)
            if all(got.get(k) == v for k, v in expected.items()):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit}: wanted {expected}, got {got}")
            time.sleep(0.2)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-q", *args).stdout

    # -- clean-up -----------------------------------------------------------------------

    def close(self) -> None:
        """Power off, then unmount and remove what nspawn left; safe to call at any point."""
        try:
            self._poweroff()
        finally:
            for mounted in reversed(self._mounted):
                if subprocess.run(["umount", str(mounted)], check=False, capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(mounted)], check=False, capture_output=True)
            self._mounted.clear()
            for leftover in (NSPAWN_RUN_DIR / "propagate" / self.name, NSPAWN_RUN_DIR / "unix-export" / self.name):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                elif leftover.exists():
                    leftover.unlink()
            # Only when empty: another container may be using them.
            for parent in (*(NSPAWN_RUN_DIR / d for d in ("propagate", "unix-export", "locks")), NSPAWN_RUN_DIR):
                try:
                    parent.rmdir()
                except OSError:
                    pass

    def _poweroff(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader is not None:
            subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "poweroff", "--no-block"],
                           check=False, capture_output=True, timeout=10)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=POWEROFF_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Killing a PID namespace's init kills every process in it.
            if self.leader is not None:
                try:
                    os.kill(self.leader, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=10)

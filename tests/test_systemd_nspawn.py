"""packaging/securellm-bridge.service under a real systemd 252 (PID 1 in systemd-nspawn).

One container boot covers the unit's whole life: READY=1 makes it active, reload, a hung
event loop killed by the watchdog and restarted, a clean stop that drains and exits 0,
the journal, and the unit's exposure score (which docs/SYSTEMD.md must state).

The unit, sysusers.d and tmpfiles.d files are installed unchanged; one drop-in points
ExecStart at this checkout's venv (and makes it reachable under ProtectHome), shortens the
watchdog and turns on the daemon's test hooks. The daemon runs packaging/config.example.toml.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import securellm_bridge
import securellmctl
from securellmctl.certs import init_dir

from .daemon import ROOT
from .nspawn import Container, available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]

UNIT = "securellm-bridge.service"
WATCHDOG_SEC = 3
EXITS = "/run/sllm-test-exits"
#: Root-only files that systemd hands to the daemon as credentials, as docs/INSTALL.md does.
CREDENTIALS = "/etc/securellm/secrets"
#: The only units the container starts besides basic.target's (journald, sysusers, tmpfiles).
TARGET = """[Unit]
Description=securellm-bridge test boot
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""
HOME_DIRS = (Path("/root"), Path("/home"))
TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))


def _code_dirs() -> set[Path]:
    """Directories the daemon's interpreter, venv and packages live in."""
    dirs = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for module in (securellm_bridge, securellmctl):
        dirs.add(Path(module.__file__).resolve().parent)
    return dirs


def _under_home(path: Path) -> bool:
    return any(path.is_relative_to(home) for home in HOME_DIRS)


def _under_tmp() -> tuple[Path, ...]:
    """Code directories under /tmp: nspawn mounts a tmpfs there, so the container gets them bound."""
    return tuple(sorted(d for d in _code_dirs() if any(d.is_relative_to(t) for t in TMP_DIRS)))


def _credentials(config: str) -> list[str]:
    """The names of the ``"cred:NAME"`` secrets that ``config`` uses (comments ignored)."""
    lines = (line.split("#", 1)[0] for line in config.splitlines())
    return sorted({name for line in lines for name in re.findall(r'"cred:([A-Za-z0-9_.-]+)"', line)})


def _drop_in(credentials: list[str]) -> str:
    venv_bin = Path(sys.prefix) / "bin"
    lines = ["[Service]", *(f"LoadCredential={name}:{CREDENTIALS}/{name}" for name in credentials), "ExecStart=",
             f"ExecStart={venv_bin / 'securellm-bridged'} --config /etc/securellm/config.toml",
             f"WatchdogSec={WATCHDOG_SEC}s", "RestartSec=500ms", "Environment=SECURELLM_TEST_HOOKS=1",
             # systemd may unload the unit once it is inactive, and with it Result= and
             # ExecMain*=; keep each run's outcome (privileged: outside the sandbox).
             f"ExecStopPost=+/bin/sh -c 'echo \"$$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS\" >>{EXITS}'"]
    under_home = sorted(d for d in _code_dirs() if _under_home(d))
    if under_home:
        # ProtectHome=yes would hide this checkout's interpreter: show only those directories.
        lines += ["ProtectHome=tmpfs", "BindReadOnlyPaths=" + " ".join(str(d) for d in under_home)]
    if _under_tmp():
        # PrivateTmp=yes would hide a checkout that lies under /tmp, and systemd cannot bind a
        # path into the private /tmp (no mount point there): only for such a checkout, share /tmp.
        lines += ["PrivateTmp=no"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    with Container(tmp_path, binds=_under_tmp()) as c:
        packaging = ROOT / "packaging"
        c.write(f"/etc/systemd/system/{UNIT}", (packaging / UNIT).read_text())
        config = (packaging / "config.example.toml").read_text()
        credentials = _credentials(config)
        for name in credentials:
            c.write(f"{CREDENTIALS}/{name}", f"sk-test-{name}", mode=0o600)
        c.write(f"/etc/systemd/system/{UNIT}.d/test.conf", _drop_in(credentials))
        c.write("/etc/systemd/system/sllm-test.target", TARGET)
        c.write("/etc/sysusers.d/securellm-bridge.conf", (packaging / "sysusers.d/securellm-bridge.conf").read_text())
        c.write("/etc/tmpfiles.d/securellm-bridge.conf", (packaging / "tmpfiles.d/securellm-bridge.conf").read_text())
        c.write("/etc/securellm/config.toml", config)
        init_dir(c.path("/etc/securellm/tls"))
        # Users of securellmctl run this checkout's venv, which may lie under /root (0700):
        # let others traverse (in the overlay only) the home directories above it.
        for parent in {p for d in _code_dirs() for p in (d, *d.parents) if _under_home(p)}:
            inside = c.path(str(parent))
            inside.chmod(inside.stat().st_mode | 0o001)
        c.boot(("systemd.unit=sllm-test.target",))
        # As docs/INSTALL.md says: the daemon's group may read the server key, nothing else.
        c.run("chgrp", "securellm", "/etc/securellm/tls/server.key")
        c.run("chmod", "0640", "/etc/securellm/tls/server.key")
        c.run("useradd", "--no-create-home", "--groups", "securellm", "alice")
        c.run("useradd", "--no-create-home", "bob")
        yield c
        # Shown by pytest when the test failed.
        print(c.run("journalctl", "--no-pager", "-u", UNIT, "-t", "securellm-bridged", check=False).stdout)


def _ctl(c: Container, user: str, *args: str) -> tuple[int, str]:
    ctl = Path(sys.prefix) / "bin" / "securellmctl"
    done = c.run("runuser", "-u", user, "--", str(ctl), *args, check=False)
    return done.returncode, done.stdout + done.stderr


def _exits(c: Container) -> list[str]:
    """``SERVICE_RESULT EXIT_CODE EXIT_STATUS`` of each run of the unit that ended."""
    return c.run("cat", EXITS).stdout.splitlines()


def test_unit_lifecycle_under_systemd(container: Container) -> None:
    c = container
    # Start: Type=notify, so `systemctl start` returns only once systemd got READY=1.
    c.run("systemctl", "start", UNIT, timeout=60)
    first = c.show(UNIT, "ActiveState", "SubState", "MainPID", "StatusText", "User")
    assert (first["ActiveState"], first["SubState"], first["User"]) == ("active", "running", "securellm"), first
    assert first["StatusText"].startswith("Ready: serving "), first
    assert "unix:/run/securellm/control.sock" in first["StatusText"], first
    modes = c.run("stat", "-c", "%n %a %U:%G", "/run/securellm", "/run/securellm/control.sock",
                  "/var/lib/securellm", "/etc/securellm/tls").stdout.splitlines()
    # The last one comes from tmpfiles.d (init_dir made it 0700 root:root).
    assert modes == ["/run/securellm 750 securellm:securellm", "/run/securellm/control.sock 660 securellm:securellm",
                     "/var/lib/securellm 700 securellm:securellm", "/etc/securellm/tls 750 root:securellm"]
    # The HTTPS listener, with the key readable through group securellm: mutual TLS only.
    tls = "/etc/securellm/tls"
    curl = ["curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}", "--cacert", f"{tls}/ca.crt",
            "https://localhost:8443/health/live"]
    answered = c.run(*curl, "--cert", f"{tls}/client.crt", "--key", f"{tls}/client.key", check=False)
    assert answered.returncode == 0 and answered.stdout != "000", answered
    assert c.run(*curl, check=False).returncode != 0
    # The control socket: group securellm may use it, others are refused.
    rc, out = _ctl(c, "alice", "status")
    assert rc == 0, out
    rc, out = _ctl(c, "bob", "status")
    assert rc == 3 and "permission denied" in out, out

    # Reload: ExecReload sends SIGHUP; the daemon reloads and the same process stays active.
    c.run("systemctl", "reload", UNIT)
    c.wait_for(UNIT, ActiveState="active", MainPID=first["MainPID"])
    c.run("sh", "-c", "until journalctl -q -t securellm-bridged | grep -q 'configuration reloaded'; "
          "do sleep 0.2; done", timeout=15)

    # Watchdog: SIGUSR2 (test hook) blocks the event loop; systemd kills and restarts it.
    c.run("kill", "-USR2", first["MainPID"])
    after = c.wait_for(UNIT, timeout=WATCHDOG_SEC * 3 + 15, NRestarts="1", ActiveState="active")
    assert c.show(UNIT, "MainPID")["MainPID"] not in ("0", first["MainPID"])
    unit_log = c.journal("-u", UNIT)
    assert "Watchdog timeout" in unit_log and "Failed with result 'watchdog'" in unit_log, unit_log
    assert "test hook: blocking the event loop" in c.journal("-t", "securellm-bridged")
    assert after["ActiveState"] == "active"
    assert _exits(c) == ["watchdog killed ABRT"]

    # Stop: SIGTERM, STOPPING=1, drain, exit 0.
    c.run("systemctl", "stop", UNIT, timeout=60)
    assert c.show(UNIT, "ActiveState") == {"ActiveState": "inactive"}
    assert _exits(c) == ["watchdog killed ABRT", "success exited 0"]
    daemon_log = c.journal("-t", "securellm-bridged")
    assert daemon_log.count("ready (pid") == 2, daemon_log
    assert "stopping: draining in-flight work" in daemon_log and daemon_log.rstrip().endswith("stopped"), daemon_log


def test_exposure_score_is_low_and_documented(container: Container) -> None:
    # Without the test drop-in: the unit exactly as packaged.
    c = container
    c.run("rm", "-r", f"/etc/systemd/system/{UNIT}.d")
    c.run("systemctl", "daemon-reload")
    out = c.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    m = re.search(r"Overall exposure level for securellm-bridge\.service: (\d+\.\d) (\w+)", out)
    assert m, out
    score, verdict = float(m.group(1)), m.group(2)
    assert score <= 2.5 and verdict == "OK", out
    doc = (ROOT / "docs" / "SYSTEMD.md").read_text()
    assert f"**{m.group(1)} {verdict}**" in doc, f"docs/SYSTEMD.md must state the exposure score {m.group(1)} {verdict}"

"""Every securellmctl command against a real daemon over its real Unix socket."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from .daemon import ROOT, Daemon

pytestmark = pytest.mark.slow


def test_status_table_and_json(daemon: Daemon) -> None:
    r = daemon.ctl("status")
    assert r.returncode == 0, r.stderr
    assert "state:" in r.stdout and "ready" in r.stdout and str(daemon.config_path) in r.stdout
    assert f"unix:{daemon.socket}" in r.stdout
    data = json.loads(daemon.ctl("status", "--json").stdout)
    assert data["state"] == "ready"
    assert data["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    assert data["config_path"] == str(daemon.config_path)
    https, control = data["listeners"]
    assert control == {"name": "control", "address": f"unix:{daemon.socket}", "protocol": "grpc"}
    assert https["name"] == https["protocol"] == "https" and https["address"].startswith("127.0.0.1:")
    assert data["counts"]["keys_active"] == "0"
    assert float(data["uptime_seconds"]) >= 0
    assert data["version"]
    assert data["memory_mode"] in ("cpu", "gpu") and data["memory_reason"]
    assert "memory:" in r.stdout


def test_json_flag_before_command(daemon: Daemon) -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "--json", "--socket", daemon.socket, "status"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "ready"


def test_socket_env_var(daemon: Daemon) -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "status", "--json"], capture_output=True, text=True,
                       env={**os.environ, "SECURELLM_SOCKET": daemon.socket})
    assert r.returncode == 0, r.stderr


def test_keys_lifecycle_never_shows_or_stores_plaintext(daemon: Daemon) -> None:
    r = daemon.ctl("keys", "create", "--owner", "alice", "--models", "gpt-4o,llama3", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    key, key_id = created["key"], created["id"]
    assert key.startswith("sk-sllm-") and len(key) >= len("sk-sllm-") + 43
    assert created["allowed_models"] == ["gpt-4o", "llama3"]

    r = daemon.ctl("keys", "create", "--owner", "bob")
    assert r.returncode == 0 and "sk-sllm-" in r.stdout and "not shown again" in r.stderr
    bob_key = r.stdout.split("key:")[1].strip()

    listing = daemon.ctl("keys", "list")
    assert listing.returncode == 0
    assert key_id in listing.stdout and "alice" in listing.stdout and "gpt-4o,llama3" in listing.stdout
    listing_json = daemon.ctl("keys", "list", "--json").stdout
    for secret in (key, bob_key):
        assert secret not in listing.stdout and secret not in listing_json
        assert secret[8:] not in listing_json  # not even without the prefix

    r = daemon.ctl("keys", "revoke", key_id)
    assert r.returncode == 0 and f"revoked {key_id}" in r.stdout
    active = json.loads(daemon.ctl("keys", "list", "--json").stdout)
    assert key_id not in [k["id"] for k in active]
    everything = json.loads(daemon.ctl("keys", "list", "--all", "--json").stdout)
    assert [k["revoked"] for k in everything if k["id"] == key_id] == [True]

    daemon.stop()  # flushes the WAL into the database file
    files = [p for p in daemon.state_dir.iterdir() if p.is_file()]
    assert files
    for path in files:
        blob = path.read_bytes()
        for secret in (key, bob_key):
            assert secret.encode() not in blob and secret[8:].encode() not in blob
    assert key not in daemon.log() and bob_key not in daemon.log()


def test_keys_policy_fields(daemon: Daemon) -> None:
    r = daemon.ctl("keys", "create", "--owner", "capped", "--rpm", "30", "--tpm", "5000", "--max-budget", "2.5",
                   "--budget-period", "day", "--json")
    assert r.returncode == 0, r.stderr
    (key,) = json.loads(daemon.ctl("keys", "list", "--json").stdout)
    assert (key["rpm"], key["tpm"], key["max_budget"], key["budget_period"]) == ("30", "5000", 2.5, "day")
    r = daemon.ctl("keys", "create", "--owner", "bad", "--rpm", "0")
    assert r.returncode == 1 and "rpm must be a positive integer" in r.stderr


def test_keys_errors(daemon: Daemon) -> None:
    r = daemon.ctl("keys", "revoke", "key_doesnotexist")
    assert r.returncode == 1 and "no API key with id" in r.stderr
    r = daemon.ctl("keys", "create", "--owner", "")
    assert r.returncode == 1 and "owner" in r.stderr
    r = daemon.ctl("keys", "create")
    assert r.returncode == 2 and "--owner" in r.stderr


def test_reload_command(daemon: Daemon) -> None:
    daemon.write_config(daemon.updated(server={"drain_timeout_seconds": 7}, state={"dir": "/var/lib/elsewhere"}))
    r = daemon.ctl("reload", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["applied"] == ["server.drain_timeout_seconds"]
    assert data["restart_required"] == ["state.dir"]
    daemon.write_config("[server\n")
    r = daemon.ctl("reload")
    assert r.returncode == 1 and "invalid TOML" in r.stderr
    assert daemon.ctl("status").returncode == 0


def test_config_validate_daemon_and_offline(daemon: Daemon, tmp_path: Path) -> None:
    r = daemon.ctl("config", "validate")
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[control]\nsocket_mode = "0666"\n[server]\nlisten = "nope"\n[security.tls]\nenabled = false\n')
    r = daemon.ctl("config", "validate", str(bad), "--json")
    assert r.returncode == 1
    problems = json.loads(r.stdout)["problems"]
    assert {p["key"] for p in problems} == {"control.socket_mode", "server.listen"}
    assert all(str(bad) in p["message"] for p in problems)
    # Offline: no daemon at this socket.
    r = subprocess.run([sys.executable, "-m", "securellmctl", "--socket", "/nonexistent/sock", "config",
                        "validate", str(daemon.config_path)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    r = subprocess.run([sys.executable, "-m", "securellmctl", "--socket", "/nonexistent/sock", "config",
                        "validate"], capture_output=True, text=True,
                       env={**os.environ, "SECURELLM_CONFIG": str(bad)})
    assert r.returncode == 1 and "control.socket_mode" in r.stdout


def test_daemon_not_running_exit_3(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "--socket", str(tmp_path / "none.sock"), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 3
    assert "the daemon is not running" in r.stderr and "Traceback" not in r.stderr


def test_stale_socket_exit_3(tmp_path: Path) -> None:
    import socket as so

    path = tmp_path / "stale.sock"
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on
    r = subprocess.run([sys.executable, "-m", "securellmctl", "--socket", str(path), "keys", "list"],
                       capture_output=True, text=True)
    assert r.returncode == 3 and "not running" in r.stderr


def test_usage_error_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2


@pytest.mark.parametrize("shell, marker", [("bash", "complete"), ("zsh", "#compdef")])
def test_completion_scripts(shell: str, marker: str) -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "completion", shell], capture_output=True, text=True)
    assert r.returncode == 0 and marker in r.stdout
    for word in ("status", "keys", "revoke", "validate", "--socket", "--json"):
        assert word in r.stdout


def test_bash_completion_script_is_valid_bash() -> None:
    r = subprocess.run([sys.executable, "-m", "securellmctl", "completion", "bash"], capture_output=True, text=True)
    check = subprocess.run(["bash", "-n"], input=r.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def _run_as(uid: int, gid: int, groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    gl = ",".join(map(str, groups)) or "-"
    return subprocess.run([sys.executable, "-m", "tests.run_as", str(uid), str(gid), gl, "--", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_socket_mode_group_and_outsiders(make_daemon: Callable[..., Daemon]) -> None:
    group = grp.getgrnam("users")
    d = make_daemon()
    d.write_config(d.updated(control={"socket_group": group.gr_name}))
    d.start()
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == group.gr_gid
    nobody = pwd.getpwnam("nobody")
    # An outsider gets a clear message and exit code 3.
    r = _run_as(nobody.pw_uid, nobody.pw_gid, [], "--socket", d.socket, "status")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "permission denied: you are not in group users" in r.stderr
    assert "Traceback" not in r.stderr
    # A member of the group may use it.
    r = _run_as(nobody.pw_uid, nobody.pw_gid, [group.gr_gid], "--socket", d.socket, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "ready"

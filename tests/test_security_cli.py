"""``securellmctl security audit``: offline with --config or without a daemon, and through the
daemon's ``Security.RunAudit``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from securellm_bridge._pb import security_pb2, security_pb2_grpc
from securellmctl.main import main

from . import tomlw
from .daemon import Daemon
from .hardened import Deployment, isolated

NO_DAEMON = "/nonexistent/control.sock"


def ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--socket", NO_DAEMON, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    return isolated(tmp_path, monkeypatch)


def test_a_hardened_config_passes(dep: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ctl(capsys, "security", "audit", "--config", str(dep.config_path))
    assert (code, err) == (0, "")
    assert out == f"{dep.config_path} (checked here, offline): no findings\n"


def test_a_high_finding_fails(dep: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    dep.write(security={"tls": {"enabled": False}, "dlp": {"mode": "off"}})
    code, out, _ = ctl(capsys, "security", "audit", "--config", str(dep.config_path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["SEVERITY", "CHECK", "DETAIL", "FIX"]
    assert lines[1].split()[:3] == ["HIGH", "tls.disabled", "security.tls.enabled"]
    assert lines[2].split()[:2] == ["LOW", "dlp.off"]
    assert lines[-1] == f"{dep.config_path} (checked here, offline): 1 high, 1 low"


def test_findings_below_high_pass(dep: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    dep.write(security={"audit": {"log_responses": True}})
    code, out, _ = ctl(capsys, "security", "audit", "--config", str(dep.config_path))
    assert code == 0
    assert "MEDIUM    audit.log_responses" in out


def test_json(dep: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    dep.write(providers={"openai": {"api_key": "sk-inline-never-printed"}})
    code, out, _ = ctl(capsys, "security", "audit", "--config", str(dep.config_path), "--json")
    assert code == 1
    assert "sk-inline-never-printed" not in out
    data = json.loads(out)
    assert data["config_path"] == str(dep.config_path) and data["source"] == "local"
    assert data["counts"] == {"high": 1, "medium": 0, "low": 0}
    [finding] = data["findings"]
    assert finding["id"] == "secrets.inline" and finding["severity"] == "high"
    assert finding["detail"] == "providers.openai.api_key is an inline literal"
    assert set(finding) == {"id", "severity", "title", "detail", "fix"} and finding["title"] and finding["fix"]


def test_a_relative_config_path_is_reported_absolute(dep: Deployment, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(dep.root)
    code, out, _ = ctl(capsys, "security", "audit", "--config", "config.toml", "--json")
    assert code == 0 and json.loads(out)["config_path"] == str(dep.config_path)


def test_an_unusable_config_is_nothing_to_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "nowhere"\n')
    code, out, err = ctl(capsys, "security", "audit", "--config", str(bad))
    assert (code, out) == (3, "")
    assert f"{bad} cannot be audited" in err and "server.listen" in err
    code, _, err = ctl(capsys, "security", "audit", "--config", str(tmp_path / "missing.toml"))
    assert code == 3 and "file does not exist" in err


def test_without_a_daemon_the_default_config_is_audited_here(dep: Deployment, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURELLM_CONFIG", str(dep.write(security={"auth": {"require_api_key": False}})))
    code, out, err = ctl(capsys, "security", "audit", "--json")
    assert code == 0  # on loopback, optional API keys are medium
    assert "the daemon is not running" in err and f"auditing {dep.config_path} here instead" in err
    data = json.loads(out)
    assert data["source"] == "local" and [f["id"] for f in data["findings"]] == ["auth.api_key_optional"]
    monkeypatch.setenv("SECURELLM_CONFIG", str(dep.root / "missing.toml"))
    code, out, err = ctl(capsys, "security", "audit")
    assert code == 3 and out == "" and "missing.toml cannot be audited" in err


@pytest.mark.slow
def test_the_daemon_audits_the_config_it_runs_with(daemon: Daemon) -> None:
    r = daemon.ctl("security", "audit", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["source"] == "daemon" and data["config_path"] == str(daemon.config_path)
    found = {(f["id"], f["severity"]) for f in data["findings"]}
    assert data["counts"]["high"] == 0, data
    # The test config: no CRL, no screening, the file is 0644.
    assert {("tls.no_crl", "low"), ("dlp.off", "low"), ("injection.off", "low"), ("files.config", "medium")} <= found

    # An inline secret in the file counts once the daemon runs with it.
    os.chmod(daemon.config_path, 0o600)
    daemon.write_config(daemon.updated(providers={"openai": {"kind": "openai", "api_key": "sk-inline-secret-value",
                                                             "models": ["gpt-4o"]}}))
    r = daemon.ctl("security", "audit", "--json")
    assert r.returncode == 0 and "secrets.inline" not in r.stdout
    assert daemon.ctl("reload").returncode == 0
    r = daemon.ctl("security", "audit")
    assert r.returncode == 1, r.stderr
    assert "secrets.inline" in r.stdout and "sk-inline-secret-value" not in r.stdout
    assert "(checked by the daemon)" in r.stdout


@pytest.mark.slow
def test_run_audit_of_another_config_file(daemon: Daemon, tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text(tomlw.dumps({"server": {"listen": "0.0.0.0:8080"}, "security": {"tls": {"enabled": False}}}))
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = security_pb2_grpc.SecurityStub(channel)
        report = stub.RunAudit(security_pb2.RunAuditRequest(config_path=str(plain)), timeout=30)
        assert report.config_path == str(plain)
        high = [f.id for f in report.findings if f.severity == security_pb2.SEVERITY_HIGH]
        assert high == ["listen.no_mtls", "tls.disabled"]
        for path, message in (("plain.toml", "must be absolute"), (str(tmp_path / "nope.toml"), "does not exist")):
            with pytest.raises(grpc.RpcError) as err:
                stub.RunAudit(security_pb2.RunAuditRequest(config_path=path), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in err.value.details()

"""The security posture checks, each for and against, on real files with controlled modes."""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from securellm_bridge.config import Config, load, parse_text
from securellm_bridge.errors import ConfigErrors
from securellm_bridge.security import posture, posture_certs, posture_files
from securellm_bridge.security.posture_base import Account, Context, Finding, group_name, ordered

from . import certutil, tomlw
from .hardened import Deployment, isolated

NOW = datetime.now(UTC)
TLS = {"cert_path": "/etc/c.crt", "key_path": "/etc/c.key", "client_ca_path": "/etc/ca.crt"}


def parse(data: dict[str, Any], *, resolve: bool = False, env: dict[str, str] | None = None) -> Config:
    return parse_text(tomlw.dumps(data), "test.toml", env or {}, resolve_secrets=resolve)


def ctx(account: Account | None = None, credentials_dir: str | None = None) -> Context:
    return Context(account or Account.current(), NOW, credentials_dir)


def ids(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.id, f.severity) for f in findings]


def foreign(path: Path) -> Context:
    """Make ``path`` belong to a user who is neither root nor the audited daemon's account."""
    if os.geteuid() == 0:
        os.chown(path, 4242, -1, follow_symlinks=False)
        return ctx()
    return ctx(Account(os.geteuid() + 1, os.getegid()))


def other_group(path: Path) -> Context:
    """A context whose daemon group is not the group of ``path``."""
    return ctx(Account(os.geteuid(), path.stat().st_gid + 1))


def chmod(path: Path, mode: int) -> Path:
    os.chmod(path, mode)
    return path


@pytest.fixture
def dep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    return isolated(tmp_path, monkeypatch)


def audit(dep: Deployment, **sections: dict[str, Any]) -> list[Finding]:
    path = str(dep.write(**sections))
    return posture.audit(load(path, resolve_secrets=False).config, path, posture.read_table(path), ctx())


def test_a_hardened_deployment_has_no_findings(dep: Deployment) -> None:
    assert audit(dep) == []
    assert posture.audit_path(str(dep.config_path)) == []


def test_audit_path_never_reads_secrets_and_rejects_an_invalid_config(dep: Deployment) -> None:
    path = dep.write(providers={"openai": {"api_key": "cred:openai"}},
                     security={"audit": {"chain_key": "${NOT_SET_ANYWHERE}"}})
    assert posture.audit_path(str(path)) == []
    dep.config_path.write_text("[server]\nlisten = 8443\n")
    with pytest.raises(ConfigErrors, match="server.listen"):
        posture.audit_path(str(dep.config_path))


def test_findings_come_most_severe_first(dep: Deployment) -> None:
    found = audit(dep, security={"dlp": {"mode": "off"}, "audit": {"log_requests": True},
                                 "tls": {"enabled": False}})
    assert ids(found) == [("tls.disabled", "high"), ("audit.log_requests", "medium"), ("dlp.off", "low")]
    assert ordered(list(reversed(found))) == found


@pytest.mark.parametrize(("listen", "tls", "api_key", "expected"), [
    ("127.0.0.1:8443", {}, True, []),
    ("0.0.0.0:8443", {}, True, []),
    ("127.0.0.1:8443", {"enabled": False}, True, [("tls.disabled", "high")]),
    ("0.0.0.0:8443", {"enabled": False}, True, [("tls.disabled", "high"), ("listen.no_mtls", "high")]),
    ("localhost:8443", {"require_client_cert": False}, True, [("tls.client_cert_optional", "medium")]),
    ("[::]:8443", {"require_client_cert": False}, True,
     [("tls.client_cert_optional", "high"), ("listen.no_mtls", "high")]),
    ("[::1]:8443", {}, False, [("auth.api_key_optional", "medium")]),
    ("bridge.example:8443", {}, False, [("auth.api_key_optional", "high")]),
])
def test_network(listen: str, tls: dict[str, bool], api_key: bool, expected: list[tuple[str, str]]) -> None:
    cfg = parse({"server": {"listen": listen},
                 "security": {"tls": {**TLS, **tls}, "auth": {"require_api_key": api_key}}})
    assert ids(posture.network(cfg)) == expected


@pytest.mark.parametrize(("audit_table", "expected"), [
    ({}, []),
    ({"enabled": False}, [("audit.disabled", "high")]),
    ({"enabled": False, "log_requests": True}, [("audit.disabled", "high")]),
    ({"log_requests": True}, [("audit.log_requests", "medium")]),
    ({"log_responses": True}, [("audit.log_responses", "medium")]),
])
def test_audit_trail(audit_table: dict[str, bool], expected: list[tuple[str, str]]) -> None:
    cfg = parse({"security": {"tls": TLS, "audit": audit_table}})
    assert ids(posture.audit_trail(cfg)) == expected


@pytest.mark.parametrize(("dlp", "injection", "expected"), [
    ("redact", "flag", []),
    ("block", "block", []),
    ("off", "flag", [("dlp.off", "low")]),
    ("redact", "off", [("injection.off", "low")]),
])
def test_screening(dlp: str, injection: str, expected: list[tuple[str, str]]) -> None:
    cfg = parse({"security": {"tls": TLS, "dlp": {"mode": dlp}, "injection": {"mode": injection}}})
    assert ids(posture.screening(cfg)) == expected


@pytest.mark.parametrize(("provider", "expected"), [
    ({"kind": "openai"}, []),
    ({"kind": "ollama"}, []),
    ({"kind": "openai", "base_url": "http://127.0.0.1:8080/v1", "api_key": "${K}"}, []),
    ({"kind": "openai", "base_url": "https://10.0.0.5/v1", "api_key": "${K}"}, []),
    ({"kind": "ollama", "base_url": "http://10.0.0.5:11434"}, [("providers.plain_http", "medium")]),
    ({"kind": "openai", "base_url": "http://10.0.0.5/v1", "api_key": "${K}"}, [("providers.plain_http", "high")]),
])
def test_plain_http_upstreams(provider: dict[str, str], expected: list[tuple[str, str]]) -> None:
    cfg = parse({"security": {"tls": TLS}, "providers": {"p": {**provider, "models": ["m"]}}})
    assert ids(posture.plain_http_providers(cfg)) == expected


def test_inline_secrets_are_named_but_never_shown() -> None:
    chain, api_key = "c0ffee" * 8, "sk-inline-0123456789"
    cfg = parse({"security": {"tls": TLS, "audit": {"chain_key": chain}},
                 "providers": {"a.b": {"kind": "openai", "api_key": api_key, "models": ["m"]},
                               "env": {"kind": "openai", "api_key": "${K}", "models": ["n"]}}},
                resolve=True, env={"K": "from-the-environment"})
    found = posture.inline_secrets(cfg)
    assert [(f.id, f.severity, f.detail) for f in found] == [
        ("secrets.inline", "high", "security.audit.chain_key is an inline literal"),
        ("secrets.inline", "high", 'providers."a.b".api_key is an inline literal'),
    ]
    text = repr(found)
    assert chain not in text and api_key not in text


def test_secret_references_are_not_inline() -> None:
    cfg = parse({"security": {"tls": TLS, "audit": {"chain_key": "cred:chain"}},
                 "providers": {"p": {"kind": "openai", "api_key": "file:/etc/securellm/p.key", "models": ["m"]},
                               "q": {"kind": "openai", "api_key": "${Q}", "models": ["n"]}}})
    assert posture.inline_secrets(cfg) == []
    raw = {"providers": {"p": {"api_key": "file:/etc/securellm/p.key"}}}
    assert posture.secret_files(cfg, raw) == [("providers.p.api_key", "/etc/securellm/p.key")]
    assert posture.secret_files(cfg, {}) == [("providers.p.api_key", None)]


@pytest.mark.parametrize(("mode", "flagged"), [
    (0o600, False), (0o400, False), (0o640, True), (0o604, True), (0o620, True), (0o610, True),
])
def test_file_secret_modes(dep: Deployment, mode: int, flagged: bool) -> None:
    secret = dep.root / "openai.key"
    secret.write_text("sk-from-a-file\n")
    chmod(secret, mode)
    found = audit(dep, providers={"openai": {"api_key": f"file:{secret}"}})
    assert ids(found) == ([("files.secret", "high")] if flagged else [])
    assert all("sk-from-a-file" not in repr(f) for f in found)


def test_file_secret_owner_location_and_absence(dep: Deployment, tmp_path: Path) -> None:
    secret = tmp_path / "creds" / "openai"
    secret.parent.mkdir()
    secret.write_text("sk-x")
    chmod(secret, 0o640)
    key = "providers.openai.api_key"
    assert ids(posture_files.secret_file(key, str(secret), ctx())) == [("files.secret", "high")]
    # Under $CREDENTIALS_DIRECTORY it is systemd's to protect, as for cred:NAME.
    assert posture_files.secret_file(key, str(secret), ctx(credentials_dir=str(secret.parent))) == []
    chmod(secret, 0o600)
    assert posture_files.secret_file(key, str(secret), ctx()) == []
    assert ids(posture_files.secret_file(key, str(secret), foreign(secret))) == [("files.secret", "high")]
    found = audit(dep, providers={"openai": {"api_key": f"file:{tmp_path / 'nope'}"}})
    assert ids(found) == [("files.missing", "medium")]
    path = str(dep.write(providers={"openai": {"api_key": f"file:{secret}"}}))
    cfg = load(path, resolve_secrets=False).config
    assert ids(posture.audit(cfg, path, {}, ctx())) == [("posture.unchecked", "low")]


@pytest.mark.parametrize(("mode", "expected"), [
    (0o600, []), (0o400, []), (0o640, []),
    (0o644, [("files.config", "medium")]), (0o604, [("files.config", "medium")]),
    (0o620, [("files.config", "high")]), (0o602, [("files.config", "high")]),
    (0o666, [("files.config", "high"), ("files.config", "medium")]),
])
def test_config_file_modes(tmp_path: Path, mode: int, expected: list[tuple[str, str]]) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    chmod(path, mode)
    assert ids(posture_files.config_file(str(path), ctx())) == expected


def test_config_file_group_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    chmod(path, 0o640)
    assert posture_files.config_file(str(path), ctx()) == []  # the daemon's group may read it
    found = posture_files.config_file(str(path), other_group(path))
    assert ids(found) == [("files.config", "medium")]
    assert f"group {group_name(path.stat().st_gid)}" in found[0].detail
    chmod(path, 0o600)
    assert ids(posture_files.config_file(str(path), foreign(path))) == [("files.config", "high")]


@pytest.mark.parametrize(("mode", "flagged"), [
    (0o600, False), (0o400, False), (0o640, False), (0o644, True), (0o660, True), (0o602, True),
])
def test_tls_key_modes(dep: Deployment, mode: int, flagged: bool) -> None:
    chmod(dep.key, mode)
    assert ids(audit(dep)) == ([("files.tls_key", "high")] if flagged else [])


def test_tls_key_group_and_owner(dep: Deployment) -> None:
    chmod(dep.key, 0o640)
    assert posture_files.tls_key_file(str(dep.key), ctx()) == []
    assert ids(posture_files.tls_key_file(str(dep.key), other_group(dep.key))) == [("files.tls_key", "high")]
    chmod(dep.key, 0o600)
    assert ids(posture_files.tls_key_file(str(dep.key), foreign(dep.key))) == [("files.tls_key", "high")]


@pytest.mark.parametrize("which", ["cert", "ca_file", "crl"])
def test_tls_trust_files_others_may_write(dep: Deployment, which: str) -> None:
    path: Path = getattr(dep, which)
    chmod(path, 0o664)
    assert ids(audit(dep)) == [("files.tls_trust", "high")]
    chmod(path, 0o646)
    assert ids(audit(dep)) == [("files.tls_trust", "high")]
    chmod(path, 0o644)
    assert posture_files.tls_trust_file("k", str(path), ctx()) == []
    assert ids(posture_files.tls_trust_file("k", str(path), foreign(path))) == [("files.tls_trust", "high")]
    path.unlink()
    assert ("files.missing", "medium") in ids(audit(dep))


@pytest.mark.parametrize(("mode", "flagged"), [
    (0o700, False), (0o750, True), (0o720, True), (0o701, True), (0o770, True),
])
def test_state_dir_modes(dep: Deployment, mode: int, flagged: bool) -> None:
    chmod(dep.state, mode)
    assert ids(audit(dep)) == ([("state.permissions", "medium")] if flagged else [])


def test_state_dir_owner_and_absence(dep: Deployment) -> None:
    assert ids(posture_files.state_dir(str(dep.state), foreign(dep.state))) == [("state.permissions", "medium")]
    assert posture_files.state_dir(str(dep.root / "not-yet"), ctx()) == []  # the daemon makes it 0700


def test_control_socket_group(dep: Deployment) -> None:
    sock = str(dep.run / "control.sock")
    broad = parse({"security": {"tls": TLS}, "control": {"socket": sock, "socket_group": "users"}}).control
    assert ids(posture_files.control_socket(broad, ctx())) == [("control.socket_group", "low")]
    owner_only = parse({"security": {"tls": TLS},
                        "control": {"socket": sock, "socket_group": "users", "socket_mode": "0600"}}).control
    assert posture_files.control_socket(owner_only, ctx()) == []
    default = parse({"security": {"tls": TLS}, "control": {"socket": sock}}).control
    assert posture_files.control_socket(default, ctx(Account(os.geteuid(), 0))) == []


@pytest.mark.parametrize(("mode", "flagged"), [(0o750, False), (0o755, False), (0o770, True), (0o757, True),
                                                (0o1777, True)])
def test_control_socket_directory(dep: Deployment, mode: int, flagged: bool) -> None:
    chmod(dep.run, mode)
    assert ids(audit(dep)) == ([("control.socket_dir", "low")] if flagged else [])


def test_control_socket_drift(dep: Deployment) -> None:
    path = dep.run / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    try:
        chmod(path, 0o600)
        group = group_name(path.stat().st_gid)
        cfg = parse({"security": {"tls": TLS},
                     "control": {"socket": str(path), "socket_group": group, "socket_mode": "0600"}}).control
        assert posture_files.control_socket(cfg, ctx()) == []
        chmod(path, 0o666)
        found = posture_files.control_socket(cfg, ctx())
        assert ids(found) == [("control.socket_drift", "low")] and "mode 0666" in found[0].detail
        chmod(path, 0o600)
        other = dataclasses.replace(cfg, socket_group=f"not-{group}")
        assert ids(posture_files.control_socket(other, ctx())) == [("control.socket_drift", "low")]
    finally:
        listener.close()


def tls_of(dep: Deployment, **overrides: Any) -> Any:
    table = {k: v for k, v in {**dep.config["security"]["tls"], **overrides}.items() if v is not None}
    return parse({"security": {"tls": table}}).security.tls


def certs_found(dep: Deployment, **overrides: Any) -> list[tuple[str, str]]:
    return ids(posture_certs.certificates(tls_of(dep, **overrides), ctx()))


def test_weak_server_key(dep: Deployment) -> None:
    weak = certutil.make_cert(dep.ca, "localhost", server=True, key="rsa1024", not_after=certutil.days_from_now(90))
    dep.cert.write_bytes(weak.cert_pem)
    found = posture_certs.certificates(tls_of(dep), ctx())
    assert ids(found) == [("certs.weak_key", "high")]
    assert "security.tls.cert_path" in found[0].detail and "RSA 1024" in found[0].detail


@pytest.mark.parametrize(("days", "expected"), [
    (365, []), (31, []), (10, [("certs.expiring", "medium")]), (-1, [("certs.expired", "high")]),
])
def test_server_certificate_expiry(dep: Deployment, days: float, expected: list[tuple[str, str]]) -> None:
    cert = certutil.make_cert(dep.ca, "localhost", server=True, not_before=certutil.days_from_now(-400),
                              not_after=certutil.days_from_now(days))
    dep.cert.write_bytes(cert.cert_pem)
    assert certs_found(dep) == expected


def test_client_ca_expiry(dep: Deployment) -> None:
    old = certutil.make_ca("Old CA", not_before=certutil.days_from_now(-400), not_after=certutil.days_from_now(-2))
    certutil.write_bundle(dep.ca_file, [dep.ca, old])
    found = posture_certs.certificates(tls_of(dep), ctx())
    assert ids(found) == [("certs.expired", "high")]
    assert found[0].detail.startswith("security.tls.client_ca_path:") and "CN=Old CA" in found[0].detail


@pytest.mark.parametrize(("next_update", "expected"), [
    (30, []), (8, []), (3, [("crl.expiring", "medium")]), (-1, [("crl.expired", "high")]),
])
def test_crl_next_update(dep: Deployment, next_update: float, expected: list[tuple[str, str]]) -> None:
    certutil.write_crl(dep.crl, dep.ca, last_update=certutil.days_from_now(-20),
                       next_update=certutil.days_from_now(next_update))
    assert certs_found(dep) == expected


def test_crl_of_another_ca_and_no_crl(dep: Deployment) -> None:
    certutil.write_crl(dep.crl, certutil.make_ca("Stranger"), next_update=certutil.days_from_now(30))
    assert certs_found(dep) == [("crl.issuer", "high")]
    assert certs_found(dep, crl_path=None) == [("tls.no_crl", "low")]
    assert certs_found(dep, crl_path=None, require_client_cert=False) == []


def test_unparseable_tls_files_and_tls_off(dep: Deployment) -> None:
    dep.cert.write_text("not a certificate\n")
    dep.crl.write_text("not a CRL\n")
    assert certs_found(dep) == [("certs.unreadable", "medium"), ("crl.unreadable", "medium")]
    assert posture_certs.certificates(parse({"security": {"tls": {"enabled": False}}}).security.tls, ctx()) == []


def make_binary(directory: Path, name: str = "llama-server", mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    return chmod(path, mode)


@pytest.mark.parametrize(("file_mode", "dir_mode", "flagged"), [
    (0o755, 0o755, False), (0o555, 0o700, False), (0o775, 0o755, True), (0o757, 0o755, True),
    (0o755, 0o775, True), (0o755, 0o777, True), (0o755, 0o1777, False),
])
def test_backend_binary_modes(tmp_path: Path, file_mode: int, dir_mode: int, flagged: bool) -> None:
    binary = make_binary(tmp_path / "bin", mode=file_mode)
    chmod(binary.parent, dir_mode)
    found = posture_files.backend_binary("backends.llamacpp.binary", str(binary), ctx())
    assert ids(found) == ([("backends.binary", "high")] if flagged else [])


def test_backend_binary_owner_path_lookup_and_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "backends.ollama.binary"
    binary = make_binary(tmp_path / "bin", "ollama")
    assert ids(posture_files.backend_binary(key, str(binary), foreign(binary))) == [("backends.binary", "high")]
    loose = make_binary(tmp_path / "loose", "ollama")
    chmod(loose.parent, 0o777)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert posture_files.backend_binary(key, "ollama", ctx()) == []  # not installed here
    monkeypatch.setenv("PATH", str(loose.parent))
    assert ids(posture_files.backend_binary(key, "ollama", ctx())) == [("backends.binary", "high")]
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "ollama").symlink_to(loose)
    found = posture_files.backend_binary(key, str(safe / "ollama"), ctx())
    assert ids(found) == [("backends.binary", "high")] and str(loose.parent) in found[0].detail
    assert posture_files.backend_binary(key, str(tmp_path / "missing" / "ollama"), ctx()) == []


def test_backend_binaries_come_from_the_config() -> None:
    cfg = parse({"security": {"tls": TLS}, "backends": {"llamacpp": {"binary": "/opt/llama/llama-server"},
                                                        "ollama": {"binary": "ollama"}}})
    assert posture_files.backend_binaries(cfg) == [("backends.llamacpp.binary", "/opt/llama/llama-server"),
                                                   ("backends.ollama.binary", "ollama")]
    attached = parse({"security": {"tls": TLS}, "backends": {"ollama": {"url": "http://127.0.0.1:11434"}}})
    assert posture_files.backend_binaries(attached) == [("backends.llamacpp.binary", "llama-server")]


def test_a_writable_backend_binary_in_the_config_is_found(dep: Deployment, tmp_path: Path) -> None:
    loose = make_binary(tmp_path / "opt", mode=0o777)
    found = audit(dep, backends={"llamacpp": {"binary": str(loose)}})
    assert ids(found) == [("backends.binary", "high")]
    assert found[0].detail.startswith(f"backends.llamacpp.binary: {loose}: {loose} (mode 0777")


def test_the_audited_account(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    st = state.stat()
    assert Account.owning(str(state)) == Account(st.st_uid, st.st_gid)
    assert Account.owning(str(tmp_path / "missing")) == Account.current() == Account(os.geteuid(), os.getegid())

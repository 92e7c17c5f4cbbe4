"""Strict config validation and secret resolution."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path

import pytest

from securellm_bridge.config import DEFAULT_PATH, Config, load, parse_text, resolve_path
from securellm_bridge.config.binder import Binder
from securellm_bridge.config.secrets import Secret, SecretResolutionError, resolve_secret
from securellm_bridge.errors import ConfigErrors


def _problems(text: str, file: str = "/etc/securellm/config.toml") -> dict[str, str]:
    with pytest.raises(ConfigErrors) as info:
        parse_text(text, file)
    return {e.key: e.message for e in info.value.errors}


PLAIN = "[security.tls]\nenabled = false\n"


def test_tls_must_be_configured_or_disabled_explicitly() -> None:
    p = _problems("")
    assert "security.tls" in p and "cert_path, key_path, client_ca_path" in p["security.tls"]
    assert "enabled = false" in p["security.tls"]
    p = _problems('[security.tls]\ncert_path = "/c"\nkey_path = "/k"\n')
    assert "client_ca_path" in p["security.tls"] and "cert_path" not in p["security.tls"]
    cfg = parse_text('[security.tls]\ncert_path = "/c"\nkey_path = "/k"\nrequire_client_cert = false\n', "x")
    assert cfg.security.tls.enabled and not cfg.security.tls.require_client_cert


def test_defaults_and_frozen() -> None:
    cfg = parse_text(PLAIN, "x.toml")
    assert cfg.server.listen == "127.0.0.1:8443"
    assert cfg.control.socket == "/run/securellm/control.sock" and cfg.control.mode == 0o660
    assert cfg.control.socket_group is None
    assert cfg.state.dir == "/var/lib/securellm" and cfg.log.level == "info"
    with pytest.raises(FrozenInstanceError):
        cfg.log.level = "debug"  # type: ignore[misc]


def test_every_problem_names_file_key_and_expectation() -> None:
    p = _problems('top = 1\n[server]\nlisten = "localhost"\nextra = 2\n[control]\nsocket = "rel/sock"\n'
                  'socket_mode = "0666"\n[log]\nlevel = 3\n[state]\ndir = ["a"]\n')
    assert set(p) == {"top", "server.listen", "server.extra", "control.socket", "control.socket_mode",
                      "log.level", "state.dir", "security.tls"}
    for msg in p.values():
        assert msg.startswith("/etc/securellm/config.toml: ")
    assert "unknown key" in p["top"] and "security.tls" in p and "HOST:PORT" in p["server.listen"]
    assert "absolute path" in p["control.socket"] and "others" in p["control.socket_mode"]
    assert "one of 'debug'" in p["log.level"] and "expected a string, got an array" in p["state.dir"]


def test_invalid_toml_reports_position() -> None:
    p = _problems("[server\n")
    assert "invalid TOML" in p[""] and "line 1" in p[""]


@pytest.mark.parametrize("listen, ok", [("127.0.0.1:8443", True), ("[::1]:8443", True), ("0.0.0.0:0", True),
                                        ("host:65536", False), (":80", False), ("[::1]8443", False)])
def test_listen_forms(listen: str, ok: bool) -> None:
    text = f'[server]\nlisten = "{listen}"\n'
    if ok:
        assert parse_text(text + PLAIN, "x").server.listen == listen
    else:
        assert "server.listen" in _problems(text)


def test_bool_is_not_an_integer() -> None:
    assert "expected a number" in _problems("[server]\ndrain_timeout_seconds = true\n")["server.drain_timeout_seconds"]
    assert parse_text("[server]\ndrain_timeout_seconds = 3\n" + PLAIN, "x").server.drain_timeout_seconds == 3.0


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="does not exist"):
        load(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigErrors, match="directory"):
        load(str(tmp_path))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigErrors, match="UTF-8"):
        load(str(bad))


def test_resolve_path_order() -> None:
    assert resolve_path("/a.toml", {"SECURELLM_CONFIG": "/b.toml"}) == "/a.toml"
    assert resolve_path(None, {"SECURELLM_CONFIG": "/b.toml"}) == "/b.toml"
    assert resolve_path(None, {}) == DEFAULT_PATH == "/etc/securellm/config.toml"


# --- secrets -----------------------------------------------------------------------------------

def test_secret_repr_never_shows_value() -> None:
    s = Secret("hunter2-very-secret", "inline")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2-very-secret"

    @dataclass(frozen=True)
    class Holder:
        key: Secret

    assert "hunter2" not in repr(Holder(s))


def test_env_secret() -> None:
    assert resolve_secret("${MY_KEY}", {"MY_KEY": "v1"}).reveal() == "v1"
    with pytest.raises(SecretResolutionError, match="MY_KEY is not set"):
        resolve_secret("${MY_KEY}", {})


def test_cred_secret(tmp_path: Path) -> None:
    (tmp_path / "openai").write_text("sk-from-cred\n")
    os.chmod(tmp_path / "openai", 0o644)  # allowed: systemd's credentials dir is private to the unit
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    s = resolve_secret("cred:openai", env)
    assert s.reveal() == "sk-from-cred" and s.source == "cred"
    with pytest.raises(SecretResolutionError, match="CREDENTIALS_DIRECTORY"):
        resolve_secret("cred:openai", {})
    with pytest.raises(SecretResolutionError, match="does not exist"):
        resolve_secret("cred:missing", env)
    with pytest.raises(SecretResolutionError, match="invalid credential name"):
        resolve_secret("cred:../etc/passwd", env)


def test_file_secret_permissions(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("file-secret-value")
    os.chmod(f, 0o600)
    assert resolve_secret(f"file:{f}", {}).reveal() == "file-secret-value"
    os.chmod(f, 0o640)
    with pytest.raises(SecretResolutionError) as info:
        resolve_secret(f"file:{f}", {})
    assert "0640" in str(info.value) and "file-secret-value" not in str(info.value)
    os.chmod(f, 0o604)
    with pytest.raises(SecretResolutionError, match="group or others"):
        resolve_secret(f"file:{f}", {})
    # ...unless it lies under $CREDENTIALS_DIRECTORY.
    assert resolve_secret(f"file:{f}", {"CREDENTIALS_DIRECTORY": str(tmp_path)}).reveal() == "file-secret-value"
    with pytest.raises(SecretResolutionError, match="absolute"):
        resolve_secret("file:relative/key", {})


def test_inline_secret() -> None:
    assert resolve_secret("plain-literal", {}).source == "inline"


@dataclass(frozen=True)
class _WithSecret:
    api_key: Secret
    name: str = field(default="x")


def test_binder_secret_errors_name_key_not_value(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("topsecret")
    os.chmod(f, 0o644)
    b = Binder("/etc/c.toml", env={})
    assert b.bind(_WithSecret, {"api_key": f"file:{f}"}, "providers.openai") is None
    (err,) = b.errors
    assert err.key == "providers.openai.api_key" and "topsecret" not in err.message
    b2 = Binder("/etc/c.toml", env={}, resolve_secrets=False)
    bound = b2.bind(_WithSecret, {"api_key": "${UNSET}"}, "p")
    assert bound is not None and bound.api_key.source == "env" and not b2.errors


def test_reload_changes_inside_named_tables_are_reported_per_key() -> None:
    # The reload rebuilds the router when a "providers." key changes: a change to a provider
    # (a [providers.NAME] table inside a dict) must come out under that prefix.
    from securellm_bridge.runtime import changed_keys

    def cfg(extra: str) -> Config:
        return parse_text(PLAIN + extra, "config.toml", env={}, resolve_secrets=False)

    one = cfg('[providers.p]\nkind = "openai"\nmodels = ["m"]\n')
    assert changed_keys(one, cfg('[providers.p]\nkind = "openai"\nmodels = ["m", "n"]\n')) == ["providers.p.models"]
    assert changed_keys(one, one) == []
    added = changed_keys(cfg(""), one)
    assert added and all(k.startswith("providers.p.") for k in added)
    assert changed_keys(cfg('[router.aliases]\nfast = ["m"]\n'), cfg("")) == ["router.aliases"]

"""A hardened deployment on disk, for the security posture tests: real certificates, a CRL,
a 0700 state dir, a 0750 socket dir and a config with every defence on.

``Deployment.write(**sections)`` writes the config with sections merged in, so that a test
weakens exactly one thing.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import certutil, tomlw


@dataclass
class Deployment:
    root: Path
    ca: certutil.Issued
    cert: Path
    key: Path
    ca_file: Path
    crl: Path
    state: Path
    run: Path
    config_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    def write(self, **sections: dict[str, Any]) -> Path:
        """Write the config with ``sections`` merged one level deep (``security={"tls": {...}}``
        replaces keys inside ``[security.tls]``), mode 0600; returns its path."""
        cfg = copy.deepcopy(self.config)
        for name, values in sections.items():
            table = cfg.setdefault(name, {})
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(table.get(k), dict):
                    table[k].update(v)
                else:
                    table[k] = v
        self.config_path.write_text(tomlw.dumps(cfg))
        os.chmod(self.config_path, 0o600)
        return self.config_path


def deploy(root: Path) -> Deployment:
    ca = certutil.make_ca()
    server = certutil.make_cert(ca, "localhost", server=True, sans=("localhost", "127.0.0.1"),
                                not_after=certutil.days_from_now(365))
    tls_dir = root / "tls"
    cert, key = server.write(tls_dir, "server")
    ca_file = certutil.write_bundle(tls_dir / "ca.crt", [ca])
    crl = certutil.write_crl(tls_dir / "ca.crl", ca, next_update=certutil.days_from_now(30))
    for path in (cert, ca_file, crl):
        os.chmod(path, 0o644)
    state, run = root / "state", root / "run"
    state.mkdir(mode=0o700)
    run.mkdir(mode=0o750)
    os.chmod(state, 0o700)
    os.chmod(run, 0o750)
    d = Deployment(root, ca, cert, key, ca_file, crl, state, run, root / "config.toml")
    d.config = {
        "server": {"listen": "127.0.0.1:8443"},
        "control": {"socket": str(run / "control.sock"), "socket_mode": "0660", "socket_group": "securellm-admins"},
        "state": {"dir": str(state)},
        "security": {
            "tls": {"enabled": True, "cert_path": str(cert), "key_path": str(key), "client_ca_path": str(ca_file),
                    "require_client_cert": True, "crl_path": str(crl)},
            "auth": {"require_api_key": True},
            "audit": {"enabled": True, "log_requests": False, "log_responses": False},
            "dlp": {"mode": "redact"},
            "injection": {"mode": "flag"},
        },
        "providers": {"openai": {"kind": "openai", "api_key": "${OPENAI_API_KEY}", "models": ["gpt-4o"]}},
    }
    d.write()
    return d



def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A hardened deployment under ``tmp_path``, to be audited with no backend executable in
    PATH and no ``$CREDENTIALS_DIRECTORY`` (what a test module's fixture returns)."""
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return deploy(tmp_path / "deployment")

"""``securellmctl certs ...`` end to end on real files, without a daemon."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from securellmctl.main import main


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """So that the modes asserted are the ones the command sets."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["--socket", "/nonexistent/control.sock", *args])
    except SystemExit as exc:  # argparse: usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_the_ca_with_exact_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    code, out, err = ctl(capsys, "certs", "init", "--dir", str(ca), "--san", "bridge.example",
                         "--san", "10.0.0.7", "--client-name", "alice", "--days", "30")
    assert code == 0, err
    assert mode(ca) == 0o700
    for name, expected in (("ca.key", 0o600), ("server.key", 0o600), ("client.key", 0o600),
                           ("ca.crt", 0o644), ("server.crt", 0o644), ("client.crt", 0o644)):
        assert mode(ca / name) == expected, name
        assert f"wrote {ca / name} ({expected:04o})" in out
    assert f'client_ca_path = "{ca / "ca.crt"}"' in out
    client = x509.load_pem_x509_certificate((ca / "client.crt").read_bytes())
    assert client.subject.rfc4514_string() == "CN=alice"

    code, _, err = ctl(capsys, "certs", "init", "--dir", str(ca))
    assert code == 1 and "refusing to overwrite" in err and err.startswith("securellmctl: ")
    before = (ca / "ca.crt").read_bytes()
    code, out, err = ctl(capsys, "certs", "init", "--dir", str(ca), "--force", "--json")
    assert code == 0, err
    assert json.loads(out)["files"]["ca_cert"] == str(ca / "ca.crt")
    assert (ca / "ca.crt").read_bytes() != before


def test_inspect_shows_subjects_sans_and_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert ctl(capsys, "certs", "init", "--dir", str(ca), "--san", "bridge.example", "--days", "30")[0] == 0
    code, out, err = ctl(capsys, "certs", "inspect", str(ca / "server.crt"))
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert fields["subject"].strip() == "CN=securellm-bridge server"
    assert fields["issuer"].strip() == "CN=securellm-bridge CA"
    assert "DNS:bridge.example" in fields["SANs"] and "IP:127.0.0.1" in fields["SANs"]
    assert fields["expires"].strip().endswith("(29 days left)")
    assert fields["key usage"].strip() == "serverAuth"

    code, out, _ = ctl(capsys, "certs", "inspect", str(ca / "server.crt"), "--json")
    (info,) = json.loads(out)
    assert info["type"] == "certificate" and info["days_left"] == 29 and info["is_ca"] is False
    assert "DNS:bridge.example" in info["sans"] and info["weak_key"] is None

    code, _, err = ctl(capsys, "certs", "inspect", str(ca / "server.key"))
    assert code == 1 and "no PEM certificate" in err
    code, _, err = ctl(capsys, "certs", "inspect", str(tmp_path / "missing.pem"))
    assert code == 1 and "does not exist" in err


def test_issue_revoke_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert ctl(capsys, "certs", "init", "--dir", str(ca))[0] == 0
    code, out, err = ctl(capsys, "certs", "issue-client", "bob", "--dir", str(ca))
    assert code == 0, err
    assert mode(ca / "bob.key") == 0o600 and mode(ca / "bob.crt") == 0o644
    assert f"wrote {ca / 'bob.key'} (0600)" in out
    bob_serial = format(x509.load_pem_x509_certificate((ca / "bob.crt").read_bytes()).serial_number, "x")
    code, _, err = ctl(capsys, "certs", "issue-client", "bob", "--dir", str(ca))
    assert code == 1 and "already exists" in err

    code, out, err = ctl(capsys, "certs", "revoke", "bob", "--dir", str(ca))
    assert code == 0, err
    assert f"serial {bob_serial}" in out and "refresh-crl" in err
    crl = x509.load_pem_x509_crl((ca / "ca.crl").read_bytes())
    assert [format(r.serial_number, "x") for r in crl] == [bob_serial]
    code, out, _ = ctl(capsys, "certs", "inspect", str(ca / "ca.crl"), "--json")
    assert json.loads(out)[0]["revoked_serials"] == [bob_serial]

    code, out, _ = ctl(capsys, "certs", "revoke", "bob", "--dir", str(ca), "--json")
    assert code == 0 and json.loads(out)["revoked"] == []  # already revoked
    code, _, err = ctl(capsys, "certs", "revoke", "ca", "--dir", str(ca))
    assert code == 1 and "CA certificate" in err
    code, _, err = ctl(capsys, "certs", "revoke", "not-a-name", "--dir", str(ca))
    assert code == 1 and "neither a certificate name" in err

    code, out, err = ctl(capsys, "certs", "list", "--dir", str(ca))
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"bob.crt", "ca.crt", "client.crt", "server.crt"}
    assert rows["bob.crt"][1] == "client" and rows["bob.crt"][-1] == "revoked"
    assert rows["ca.crt"][1] == "ca" and rows["server.crt"][1] == "server"
    assert rows["client.crt"][-1] == "valid"
    listed = json.loads(ctl(capsys, "certs", "list", "--dir", str(ca), "--json")[1])
    assert {i["path"].rsplit("/", 1)[1]: i["status"] for i in listed}["bob.crt"] == "revoked"

    code, out, err = ctl(capsys, "certs", "refresh-crl", "--dir", str(ca))
    assert code == 0 and "re-signed" in out, err
    refreshed = x509.load_pem_x509_crl((ca / "ca.crl").read_bytes())
    assert [r.serial_number for r in refreshed] == [r.serial_number for r in crl]
    assert refreshed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3


def test_errors_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = ctl(capsys, "certs", "issue-client", "bob", "--dir", str(tmp_path / "empty"))
    assert code == 1 and err.startswith("securellmctl: ")
    code, _, err = ctl(capsys, "certs", "init", "--dir", str(tmp_path / "x"), "--days", "0")
    assert code == 1 and "validity must be at least 1 day" in err
    code, _, err = ctl(capsys, "certs", "list")
    assert code == 2 and "--dir" in err
    code, _, _ = ctl(capsys, "certs")
    assert code == 2
    code, _, _ = ctl(capsys, "certs", "init", "--dir", str(tmp_path / "y"), "--days", "many")
    assert code == 2

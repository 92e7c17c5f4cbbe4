"""securellmctl.certs: the private CA directory, client issue/revoke, inspection."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from securellm_bridge.errors import InvalidRequest
from securellm_bridge.security.tls import build_server_context
from securellmctl import certs
from securellmctl.certs import CertError, CertInfo, CrlInfo

from . import certutil

E = TypeVar("E", bound=x509.ExtensionType)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask, so that the modes asserted are the ones the code sets."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    certs.init_dir(directory)
    return directory


# --- init_dir ---------------------------------------------------------------------------


def test_init_dir_files_and_modes(tmp_path: Path, umask: None) -> None:
    directory = tmp_path / "nested" / "pki"
    made = certs.init_dir(directory)
    assert made == certs.CertSet(
        ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
        server_cert=directory / "server.crt", server_key=directory / "server.key",
        client_cert=directory / "client.crt", client_key=directory / "client.key",
    )
    assert mode(directory) == 0o700
    for key in (made.ca_key, made.server_key, made.client_key):
        assert mode(key) == 0o600
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    for cert in (made.ca_cert, made.server_cert, made.client_cert):
        assert mode(cert) == 0o644
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"]
    )


def test_init_dir_modes_hold_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        made = certs.init_dir(tmp_path / "pki")
    finally:
        os.umask(old)
    assert mode(made.ca_cert) == 0o644
    assert mode(made.ca_key) == 0o600


def test_init_dir_ca(pki: Path) -> None:
    ca = load(pki / "ca.crt")
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    basic = ext(ca, x509.BasicConstraints)
    assert isinstance(basic, x509.BasicConstraints) and basic.ca
    usage = ext(ca, x509.KeyUsage)
    assert isinstance(usage, x509.KeyUsage)
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)
    info = certs.inspect(pki / "ca.crt")[0]
    assert isinstance(info, CertInfo)
    assert info.key_type == "EC P-256" and info.is_ca


def test_init_dir_server_and_client(tmp_path: Path) -> None:
    made = certs.init_dir(tmp_path / "pki", sans=["bridge.example.org", "10.1.2.3", "fd00::7", "localhost"],
                          client_name="alice", days=30)
    ca = load(made.ca_cert)
    server, client = load(made.server_cert), load(made.client_cert)
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
        basic = ext(cert, x509.BasicConstraints)
        assert isinstance(basic, x509.BasicConstraints) and not basic.ca
        assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=31)
    assert list(ext(server, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(ext(client, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    info = certs.inspect(made.server_cert)[0]
    assert isinstance(info, CertInfo)
    assert info.sans == ("DNS:localhost", "IP:127.0.0.1", "IP:::1", "DNS:bridge.example.org",
                         "IP:10.1.2.3", "IP:fd00::7")
    assert info.extended_key_usage == ("serverAuth",)


def test_init_dir_refuses_to_overwrite(pki: Path) -> None:
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    with pytest.raises(CertError, match="refusing to overwrite"):
        certs.init_dir(pki)
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before


def test_init_dir_force_replaces_the_ca_and_its_crl(pki: Path) -> None:
    old_ca = (pki / "ca.crt").read_bytes()
    certs.revoke_client(pki, "client")
    certs.init_dir(pki, force=True)
    assert (pki / "ca.crt").read_bytes() != old_ca
    assert not (pki / "ca.crl").exists()
    assert mode(pki / "ca.key") == 0o600


@pytest.mark.parametrize("kwargs", [
    {"client_name": "../escape"},
    {"client_name": ""},
    {"sans": ["not a name"]},
    {"sans": ["-bad.example"]},
    {"days": 0},
    {"days": 4000},
])
def test_init_dir_rejects_bad_arguments_before_writing(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(CertError):
        certs.init_dir(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki").exists()


def test_init_dir_files_make_a_working_mtls_pair(pki: Path) -> None:
    ctx = build_server_context(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt"),
                               True, None)
    client = certutil.client_context(pki / "ca.crt", (pki / "client.crt", pki / "client.key"))
    for host in ("localhost", "127.0.0.1"):
        out = certutil.handshake(ctx, client, server_hostname=host)
        assert out.ok, out
        assert out.peer == "CN=client"


# --- issue_client -----------------------------------------------------------------------


def test_issue_client(pki: Path, umask: None) -> None:
    cert_path, key_path = certs.issue_client(pki, "build-bot.01", days=10)
    assert (cert_path, key_path) == (pki / "build-bot.01.crt", pki / "build-bot.01.key")
    assert (mode(cert_path), mode(key_path)) == (0o644, 0o600)
    cert = load(cert_path)
    cert.verify_directly_issued_by(load(pki / "ca.crt"))
    assert cert.subject.rfc4514_string() == "CN=build-bot.01"
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_issue_client_refuses_to_overwrite(pki: Path) -> None:
    before = (pki / "client.crt").read_bytes()
    with pytest.raises(CertError, match="already exists"):
        certs.issue_client(pki, "client")
    assert (pki / "client.crt").read_bytes() == before
    certs.issue_client(pki, "bob")
    with pytest.raises(CertError, match="already exists"):
        certs.issue_client(pki, "bob")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-dash", "sp ace", "x" * 65, "ünï"])
def test_issue_client_rejects_unsafe_names(pki: Path, name: str) -> None:
    with pytest.raises(CertError, match="invalid client name"):
        certs.issue_client(pki, name)


def test_issue_client_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="holds no CA"):
        certs.issue_client(tmp_path, "bob")
    assert list(tmp_path.iterdir()) == []


def test_issue_client_refuses_to_outlive_the_ca(pki: Path) -> None:
    with pytest.raises(CertError, match="outlive the CA"):
        certs.issue_client(pki, "bob", days=5000)
    assert not (pki / "bob.key").exists()


def test_errors_never_echo_key_material(pki: Path) -> None:
    (pki / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertError) as err:
        certs.issue_client(pki, "bob")
    assert isinstance(err.value, InvalidRequest)
    assert "ca.key" in str(err.value)
    assert "SECRETKEYMATERIAL" not in str(err.value) and "SECRETKEYMATERIAL" not in repr(err.value)


def test_issue_client_rejects_a_key_from_another_ca(pki: Path, tmp_path: Path) -> None:
    other = certs.init_dir(tmp_path / "other")
    (pki / "ca.key").write_bytes(other.ca_key.read_bytes())
    with pytest.raises(CertError, match="does not belong"):
        certs.issue_client(pki, "bob")


# --- revocation -------------------------------------------------------------------------


def crl_of(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / "ca.crl").read_bytes())


def test_revoke_by_name_then_by_serial_keeps_both(pki: Path) -> None:
    certs.issue_client(pki, "bob")
    certs.issue_client(pki, "carol")
    path = certs.revoke_client(pki, "bob")
    assert path == pki / "ca.crl"
    assert mode(path) == 0o644
    carol_serial = load(pki / "carol.crt").serial_number
    pretty = format(carol_serial, "x")
    colon_form = ":".join(pretty.zfill(len(pretty) + len(pretty) % 2)[i:i + 2]
                          for i in range(0, len(pretty) + len(pretty) % 2, 2)).upper()
    certs.revoke_client(pki, colon_form)
    crl = crl_of(pki)
    ca = load(pki / "ca.crt")
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert {r.serial_number for r in crl} == {load(pki / "bob.crt").serial_number, carol_serial}
    assert crl.next_update_utc is not None
    assert timedelta(days=29) < crl.next_update_utc - crl.last_update_utc < timedelta(days=31)
    number = ext_crl_number(crl)
    certs.revoke_client(pki, "bob")
    again = crl_of(pki)
    assert len(list(again)) == 2
    assert ext_crl_number(again) == number + 1


def ext_crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoke_serial_of_a_certificate_no_longer_on_disk(pki: Path) -> None:
    certs.revoke_client(pki, "0x1234abcd")
    assert [r.serial_number for r in crl_of(pki)] == [0x1234ABCD]


@pytest.mark.parametrize("what,message", [
    ("nobody", "neither a certificate name"),
    ("ca", "CA certificate"),
    ("0", "positive"),
])
def test_revoke_refusals(pki: Path, what: str, message: str) -> None:
    with pytest.raises(CertError, match=message):
        certs.revoke_client(pki, what)
    assert not (pki / "ca.crl").exists()


def test_revoke_refuses_a_certificate_of_another_ca(pki: Path) -> None:
    foreign = certutil.make_cert(certutil.make_ca(), "mallory", client=True)
    foreign.write(pki, "mallory")
    with pytest.raises(CertError, match="not issued by the CA"):
        certs.revoke_client(pki, "mallory")


def test_revoke_refuses_a_crl_of_another_ca(pki: Path) -> None:
    certutil.write_crl(pki / "ca.crl", certutil.make_ca("Other CA"))
    with pytest.raises(CertError, match="not signed by the CA"):
        certs.revoke_client(pki, "client")


def test_refresh_crl_creates_and_keeps_entries(pki: Path) -> None:
    certs.refresh_crl(pki)
    assert list(crl_of(pki)) == []
    assert ext_crl_number(crl_of(pki)) == 1
    certs.revoke_client(pki, "client")
    certs.refresh_crl(pki)
    assert [r.serial_number for r in crl_of(pki)] == [load(pki / "client.crt").serial_number]
    assert ext_crl_number(crl_of(pki)) == 3


def test_revoked_client_is_refused_by_the_server(pki: Path) -> None:
    certs.issue_client(pki, "bob")
    crl = certs.revoke_client(pki, "client")
    ctx = build_server_context(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt"),
                               True, str(crl))
    revoked = certutil.handshake(ctx, certutil.client_context(pki / "ca.crt", (pki / "client.crt",
                                                                                 pki / "client.key")))
    assert not revoked.ok
    assert "revoked" in str(revoked.server_error)
    bob = certutil.handshake(ctx, certutil.client_context(pki / "ca.crt", (pki / "bob.crt", pki / "bob.key")))
    assert bob.ok, bob
    assert bob.peer == "CN=bob"


# --- inspect / list_dir / weak_key_reason -----------------------------------------------


def test_inspect_certificate_fields(tmp_path: Path) -> None:
    ca = certutil.make_ca("Root", key="ec384")
    leaf = certutil.make_cert(ca, "svc", key="rsa2048", server=True, sans=("svc.local", "192.0.2.1"),
                              not_after=certutil.days_from_now(10.5))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(leaf.cert_pem + leaf.key_pem + ca.cert_pem)
    infos = certs.inspect(bundle)
    assert [type(i) for i in infos] == [CertInfo, CertInfo]
    first, second = infos
    assert isinstance(first, CertInfo) and isinstance(second, CertInfo)
    assert first.path == bundle
    assert (first.subject, first.issuer) == ("CN=svc", "CN=Root")
    assert first.serial == format(leaf.cert.serial_number, "x")
    assert first.not_after == leaf.cert.not_valid_after_utc
    assert first.not_before.tzinfo is not None and first.not_after.utcoffset() == timedelta(0)
    assert first.days_left == 10
    assert first.sans == ("DNS:svc.local", "IP:192.0.2.1")
    assert (first.key_type, first.key_bits, first.is_ca) == ("RSA 2048", 2048, False)
    assert first.fingerprint_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(first.fingerprint_sha256) == 95
    assert (second.key_type, second.is_ca, second.sans) == ("EC P-384", True, ())
    later = certs.inspect(bundle, now=certutil.days_from_now(12))[0]
    assert isinstance(later, CertInfo) and later.days_left == -2


def test_inspect_crl(pki: Path) -> None:
    certs.revoke_client(pki, "client")
    (info,) = certs.inspect(pki / "ca.crl")
    assert isinstance(info, CrlInfo)
    assert info.issuer == "CN=securellm-bridge CA"
    assert info.revoked_serials == (format(load(pki / "client.crt").serial_number, "x"),)
    assert info.crl_number == 1
    assert info.next_update is not None and info.next_update > info.last_update


def test_inspect_serial_round_trips_into_revoke(pki: Path) -> None:
    info = certs.inspect(pki / "client.crt")[0]
    assert isinstance(info, CertInfo)
    certs.revoke_client(pki, info.serial)
    crl_info = certs.inspect(pki / "ca.crl")[0]
    assert isinstance(crl_info, CrlInfo) and crl_info.revoked_serials == (info.serial,)


@pytest.mark.parametrize("content,message", [
    (b"", "no PEM certificate"),
    (b"hello\n", "no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "malformed certificate"),
    (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "malformed revocation list"),
])
def test_inspect_rejects_non_certificates(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.pem"
    path.write_bytes(content)
    with pytest.raises(CertError, match=message):
        certs.inspect(path)


def test_inspect_a_key_file_does_not_echo_it(pki: Path) -> None:
    with pytest.raises(CertError) as err:
        certs.inspect(pki / "server.key")
    body = (pki / "server.key").read_text().splitlines()[1]
    assert body not in str(err.value)


def test_inspect_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="does not exist"):
        certs.inspect(tmp_path / "absent.crt")


def test_list_dir(pki: Path) -> None:
    certs.revoke_client(pki, "client")
    extra = certutil.make_cert(None, "self-signed")
    (pki / "extra.pem").write_bytes(extra.cert_pem)
    (pki / "key.pem").write_bytes(extra.key_pem)
    (pki / "notes.txt").write_text("not a certificate")
    infos = certs.list_dir(pki)
    assert [i.path.name for i in infos] == ["ca.crt", "client.crt", "extra.pem", "server.crt"]
    assert [i.subject for i in infos] == ["CN=securellm-bridge CA", "CN=client", "CN=self-signed",
                                          "CN=securellm-bridge server"]


def test_list_dir_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="not a directory"):
        certs.list_dir(tmp_path / "absent")


@pytest.mark.parametrize("kind,reason", [
    ("rsa1024", "RSA 1024 key is shorter than 2048 bits"),
    ("ec192", "EC secp192r1 key is shorter than 256 bits"),
    ("rsa2048", None),
    ("ec256", None),
    ("ec384", None),
    ("ed25519", None),
])
def test_weak_key_reason(tmp_path: Path, kind: certutil.KeyKind, reason: str | None) -> None:
    path = tmp_path / "c.crt"
    path.write_bytes(certutil.make_cert(None, "k", key=kind).cert_pem)
    info = certs.inspect(path)[0]
    assert isinstance(info, CertInfo)
    assert certs.weak_key_reason(info) == reason

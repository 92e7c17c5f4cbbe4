"""The HTTPS listener's mutual TLS, with real handshakes against the real daemon."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securellmctl.certs import issue_client, revoke_client

from . import certutil
from .bridge import Bridge, client_ssl, https_address, start_bridge

pytestmark = pytest.mark.slow


@pytest.fixture
def bridge(make_daemon: Callable[..., Any]) -> Bridge:
    return start_bridge(make_daemon, upstreams={}, providers={})


def _get(b: Bridge, ctx: ssl.SSLContext) -> httpx.Response:
    with httpx.Client(base_url=b.base_url, verify=ctx, timeout=10) as c:
        return c.get("/health/live")


def _daemon_ca(b: Bridge) -> certutil.Issued:
    certs = b.daemon.certs
    cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    return certutil.Issued(cert, key)  # type: ignore[arg-type]


def test_valid_client_cert_is_accepted(bridge: Bridge) -> None:
    d = bridge.daemon
    assert _get(bridge, client_ssl(d, d.certs.client_cert, d.certs.client_key)).status_code == 200


def test_no_client_cert_is_refused(bridge: Bridge) -> None:
    with pytest.raises(httpx.TransportError):
        _get(bridge, client_ssl(bridge.daemon))


def test_cert_from_another_ca_is_refused(bridge: Bridge, tmp_path: Path) -> None:
    other = certutil.make_ca("other CA")
    cert, key = certutil.make_cert(other, "mallory", client=True).write(tmp_path, "mallory")
    with pytest.raises(httpx.TransportError):
        _get(bridge, client_ssl(bridge.daemon, cert, key))


def test_expired_cert_is_refused(bridge: Bridge, tmp_path: Path) -> None:
    old = certutil.make_cert(_daemon_ca(bridge), "old", client=True, not_before=certutil.days_from_now(-30),
                             not_after=certutil.days_from_now(-1))
    cert, key = old.write(tmp_path, "old")
    with pytest.raises(httpx.TransportError):
        _get(bridge, client_ssl(bridge.daemon, cert, key))


def test_tls12_floor_and_tls13_preferred(bridge: Bridge) -> None:
    d = bridge.daemon
    host, port = https_address(d).rsplit(":", 1)
    ctx = client_ssl(d, d.certs.client_cert, d.certs.client_key)
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() == "TLSv1.3"
    old = client_ssl(d, d.certs.client_cert, d.certs.client_key)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point of this check
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection((host, int(port))) as raw, old.wrap_socket(raw, server_hostname="localhost"):
            pass


def test_sighup_rotates_server_cert_and_crl_without_dropping_connections(make_daemon: Callable[..., Any],
                                                                         tmp_path: Path) -> None:
    b = start_bridge(make_daemon, upstreams={}, providers={})
    d = b.daemon
    ctx = client_ssl(d, d.certs.client_cert, d.certs.client_key)
    with httpx.Client(base_url=b.base_url, verify=ctx, timeout=10) as kept:
        assert kept.get("/health/live").status_code == 200
        old_serial = _server_serial(b, ctx)
        # A new server cert from the same CA, and a CRL that revokes a second client.
        fresh = tmp_path / "fresh"
        shutil.copytree(d.certs.ca_cert.parent, fresh)
        for name in ("server.crt", "server.key"):
            (fresh / name).unlink()
        issue_client(fresh, "bob")
        revoke_client(fresh, "bob")
        new_server = certutil.make_cert(_daemon_ca(b), "localhost", server=True,
                                        sans=("localhost", "127.0.0.1", "::1"))
        new_server.write(fresh, "server")
        cfg = d.updated()
        cfg["security"]["tls"].update(cert_path=str(fresh / "server.crt"), key_path=str(fresh / "server.key"),
                                      crl_path=str(fresh / "ca.crl"))
        d.write_config(cfg)
        start = len(d.notify.messages)  # type: ignore[union-attr]
        d.signal(signal.SIGHUP)
        i = d.notify.wait_for("RELOADING", "1", after=start)  # type: ignore[union-attr]
        d.notify.wait_for("READY", "1", after=i + 1)  # type: ignore[union-attr]
        d.wait_log("configuration reloaded")
        # The open connection still works...
        assert kept.get("/health/live").status_code == 200
    # ...and new handshakes see the new certificate and honour the CRL.
    assert _server_serial(b, ctx) != old_serial
    assert _server_serial(b, ctx) == new_server.cert.serial_number
    bob = client_ssl(d, fresh / "bob.crt", fresh / "bob.key")
    with pytest.raises(httpx.TransportError):
        _get(b, bob)
    assert _get(b, ctx).status_code == 200


def _server_serial(b: Bridge, ctx: ssl.SSLContext) -> int:
    host, port = https_address(b.daemon).rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_plain_http_only_when_disabled_explicitly(make_daemon: Callable[..., Any]) -> None:
    d = make_daemon()
    cfg = d.updated()
    cfg["security"]["tls"] = {"enabled": False}
    d.write_config(cfg)
    d.config = cfg
    d.start()
    assert "TLS IS DISABLED" in d.wait_log("TLS IS DISABLED")
    addr = https_address(d)
    r = httpx.get(f"http://{addr}/health/live")
    assert r.status_code == 200

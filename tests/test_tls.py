"""The inference API's server TLS context, exercised with real handshakes over loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from securellm_bridge.errors import ConfigError
from securellm_bridge.security.tls import (
    ContextHolder,
    TlsConfigKeys,
    build_server_context,
    peer_subject,
)

from . import certutil


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: certutil.Issued
    ca_file: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    client_issued: certutil.Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = certutil.make_ca()
    server = certutil.make_cert(ca, "localhost", server=True, sans=("localhost", "127.0.0.1"))
    client = certutil.make_cert(ca, "alice", client=True)
    return Pki(
        dir=tmp_path,
        ca=ca,
        ca_file=certutil.write_bundle(tmp_path / "ca.crt", [ca]),
        server=server.write(tmp_path, "server"),
        client=client.write(tmp_path, "alice"),
        client_issued=client,
    )


def server_ctx(pki: Pki, *, require: bool = True, crl: Path | None = None) -> ssl.SSLContext:
    return build_server_context(str(pki.server[0]), str(pki.server[1]), str(pki.ca_file), require,
                                None if crl is None else str(crl))


def verify_message(outcome: certutil.Outcome) -> str:
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError), outcome
    return outcome.server_error.verify_message


# --- the hardened context ------------------------------------------------------------


def test_client_certificate_accepted_over_tls13(pki: Pki) -> None:
    out = certutil.handshake(server_ctx(pki), certutil.client_context(pki.ca, pki.client))
    assert out.ok, out
    assert out.version == "TLSv1.3"
    assert out.peer == "CN=alice"


def test_missing_client_certificate_refused(pki: Pki) -> None:
    out = certutil.handshake(server_ctx(pki), certutil.client_context(pki.ca))
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert out.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert out.peer is None


def test_client_certificate_from_another_ca_refused(pki: Pki) -> None:
    other_ca = certutil.make_ca("Other CA")
    stranger = certutil.make_cert(other_ca, "alice", client=True).write(pki.dir, "stranger")
    out = certutil.handshake(server_ctx(pki), certutil.client_context(pki.ca, stranger))
    assert not out.ok
    assert "unable to get local issuer certificate" in verify_message(out)


def test_expired_client_certificate_refused(pki: Pki) -> None:
    expired = certutil.make_cert(pki.ca, "old", client=True, not_before=certutil.days_from_now(-10),
                                 not_after=certutil.days_from_now(-1)).write(pki.dir, "old")
    out = certutil.handshake(server_ctx(pki), certutil.client_context(pki.ca, expired))
    assert not out.ok
    assert "expired" in verify_message(out)


@pytest.mark.parametrize("with_crl", [True, False])
def test_revoked_client_certificate_refused_only_with_crl(pki: Pki, with_crl: bool) -> None:
    crl = certutil.write_crl(pki.dir / "ca.crl", pki.ca, [pki.client_issued])
    out = certutil.handshake(server_ctx(pki, crl=crl if with_crl else None),
                    certutil.client_context(pki.ca, pki.client))
    if with_crl:
        assert not out.ok
        assert "revoked" in verify_message(out)
    else:
        assert out.ok, out


def test_unrevoked_client_accepted_with_crl(pki: Pki) -> None:
    other = certutil.make_cert(pki.ca, "bob", client=True)
    crl = certutil.write_crl(pki.dir / "ca.crl", pki.ca, [other])
    out = certutil.handshake(server_ctx(pki, crl=crl), certutil.client_context(pki.ca, pki.client))
    assert out.ok, out
    assert out.peer == "CN=alice"


def test_optional_client_certificate(pki: Pki) -> None:
    ctx = server_ctx(pki, require=False)
    anonymous = certutil.handshake(ctx, certutil.client_context(pki.ca))
    assert anonymous.ok, anonymous
    assert anonymous.peer is None
    known = certutil.handshake(ctx, certutil.client_context(pki.ca, pki.client))
    assert known.ok, known
    assert known.peer == "CN=alice"
    stranger = certutil.make_cert(certutil.make_ca("Other CA"), "eve", client=True)
    refused = certutil.handshake(ctx, certutil.client_context(pki.ca, stranger.write(pki.dir, "eve")))
    assert not refused.ok
    assert "unable to get local issuer certificate" in verify_message(refused)


def test_no_client_ca_means_no_client_certificate_request(pki: Pki) -> None:
    ctx = build_server_context(str(pki.server[0]), str(pki.server[1]), None, False, None)
    assert ctx.verify_mode == ssl.CERT_NONE
    out = certutil.handshake(ctx, certutil.client_context(pki.ca, pki.client))
    assert out.ok, out
    assert out.peer is None


def _legacy_client(pki: Pki) -> ssl.SSLContext:
    client = certutil.client_context(pki.ca, pki.client, minimum=ssl.TLSVersion.TLSv1_1,
                                     maximum=ssl.TLSVersion.TLSv1_1)
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    return client


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_refused(pki: Pki) -> None:
    # Control: this client really speaks TLS 1.1 when a server allows it.
    lax = server_ctx(pki)
    lax.minimum_version = ssl.TLSVersion.TLSv1_1
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    control = certutil.handshake(lax, _legacy_client(pki))
    if not control.ok:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {control}")
    assert control.version == "TLSv1.1"

    out = certutil.handshake(server_ctx(pki), _legacy_client(pki))
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert out.server_error.reason in {"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW"}


def test_tls12_negotiates_ecdhe_aead(pki: Pki) -> None:
    client = certutil.client_context(pki.ca, pki.client, maximum=ssl.TLSVersion.TLSv1_2)
    out = certutil.handshake(server_ctx(pki), client)
    assert out.ok, out
    assert out.version == "TLSv1.2"
    assert out.cipher is not None and out.cipher.startswith("ECDHE-")
    assert "GCM" in out.cipher or "CHACHA20" in out.cipher


def test_tls12_cbc_only_client_refused(pki: Pki) -> None:
    client = certutil.client_context(pki.ca, pki.client, maximum=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")
    out = certutil.handshake(server_ctx(pki), client)
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert out.server_error.reason == "NO_SHARED_CIPHER"


def test_context_options(pki: Pki) -> None:
    ctx = server_ctx(pki, crl=certutil.write_crl(pki.dir / "ca.crl", pki.ca))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE,
                   ssl.OP_NO_TICKET):
        assert ctx.options & option
    assert ctx.num_tickets == 0
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(name.startswith("ECDHE-") for name in tls12)
    assert server_ctx(pki, require=False).verify_mode == ssl.CERT_OPTIONAL


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_are_not_resumed(pki: Pki, version: ssl.TLSVersion) -> None:
    client = certutil.client_context(pki.ca, pki.client, maximum=version)
    # Control: a context with OpenSSL's defaults does resume this client's session.
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.load_cert_chain(*pki.server)
    lax.load_verify_locations(pki.ca_file)
    lax.verify_mode = ssl.CERT_REQUIRED
    first = certutil.handshake(lax, client)
    assert certutil.handshake(lax, client, session=first.session).resumed

    ctx = server_ctx(pki)
    first = certutil.handshake(ctx, client)
    again = certutil.handshake(ctx, client, session=first.session)
    assert again.ok, again
    assert not again.resumed


# --- configuration errors --------------------------------------------------------------


def config_error(build: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        build()
    return err.value


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "garbage"])
def test_certificate_file_problems_name_file_and_key(pki: Pki, content: str | None) -> None:
    cert = pki.dir / "bad.crt"
    if content is not None:
        cert.write_text(content)
    err = config_error(lambda: build_server_context(cert, pki.server[1], None, False, None))
    assert (err.file, err.key) == (str(cert), "security.tls.cert_path")


def test_mismatched_key_reported_without_key_material(pki: Pki) -> None:
    _, other_key = certutil.make_cert(pki.ca, "other", server=True).write(pki.dir, "other")
    err = config_error(lambda: build_server_context(pki.server[0], other_key, None, False, None))
    assert (err.file, err.key) == (str(other_key), "security.tls.key_path")
    key_body = other_key.read_text().splitlines()[1]
    assert key_body not in str(err) and key_body not in repr(err)


def test_encrypted_key_refused_without_prompting(pki: Pki) -> None:
    issued = certutil.make_cert(pki.ca, "locked", server=True)
    cert_path, key_path = issued.write(pki.dir, "locked")
    key_path.write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase")))
    err = config_error(lambda: build_server_context(cert_path, key_path, None, False, None))
    assert (err.file, err.key) == (str(key_path), "security.tls.key_path")
    assert "unencrypted" in err.expected


def test_client_ca_problems(pki: Pki) -> None:
    missing = pki.dir / "missing-ca.crt"
    err = config_error(lambda: build_server_context(*pki.server, missing, True, None))
    assert (err.file, err.key) == (str(missing), "security.tls.client_ca_path")
    err = config_error(lambda: build_server_context(*pki.server, None, True, None))
    assert err.key == "security.tls.client_ca_path"


@pytest.mark.parametrize("problem,expected", [
    ("foreign", "signed by a CA"), ("stale", "expired"), ("not-a-crl", "revocation list"),
])
def test_crl_problems(pki: Pki, problem: str, expected: str) -> None:
    crl = {
        "foreign": lambda: certutil.write_crl(pki.dir / "x.crl", certutil.make_ca("Other CA")),
        "stale": lambda: certutil.write_crl(pki.dir / "x.crl", pki.ca,
                                            last_update=certutil.days_from_now(-40),
                                            next_update=certutil.days_from_now(-10)),
        "not-a-crl": lambda: pki.ca_file,
    }[problem]()
    err = config_error(lambda: server_ctx(pki, crl=crl))
    assert (err.file, err.key) == (str(crl), "security.tls.crl_path")
    assert expected in err.expected


def test_crl_needs_a_client_ca(pki: Pki) -> None:
    good = certutil.write_crl(pki.dir / "good.crl", pki.ca)
    err = config_error(lambda: build_server_context(*pki.server, None, False, good))
    assert err.key == "security.tls.crl_path"


def test_custom_config_key_names(pki: Pki) -> None:
    keys = TlsConfigKeys(cert_path="api.tls.cert", key_path="api.tls.key",
                         client_ca_path="api.tls.ca", crl_path="api.tls.crl")
    err = config_error(lambda: build_server_context(pki.dir / "x.crt", pki.server[1], None, False, None,
                                                    keys=keys))
    assert err.key == "api.tls.cert"
    assert "api.tls.cert" in str(err)


# --- peer_subject ----------------------------------------------------------------------


def test_peer_subject_matches_rfc4514(pki: Pki) -> None:
    odd = certutil.make_cert(pki.ca, "bob+ops, #1", client=True, subject_extra=[
        (NameOID.COUNTRY_NAME, "DE"),
        (NameOID.ORGANIZATION_NAME, "Acme, Inc."),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "<ml>"),
    ])
    out = certutil.handshake(server_ctx(pki), certutil.client_context(pki.ca, odd.write(pki.dir, "odd")))
    assert out.ok, out
    assert out.peer == odd.cert.subject.rfc4514_string()
    assert out.peer == r"CN=bob\+ops\, #1,OU=\<ml\>,O=Acme\, Inc.,C=DE"


def test_peer_subject_without_connection() -> None:
    assert peer_subject(None) is None


# --- reloading: ContextHolder ----------------------------------------------------------

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, 30))


class EchoServer:
    """An asyncio TLS server that echoes lines and records each connection's peer subject."""

    def __init__(self, holder: ContextHolder) -> None:
        self.holder = holder
        self.peers: list[str | None] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> EchoServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.holder.bound)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(peer_subject(writer.get_extra_info("ssl_object")))
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def connect(self, client: ssl.SSLContext, host: str = "localhost"
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=client, server_hostname=host)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> bytes:
    writer.write(text + b"\n")
    await writer.drain()
    return await reader.readline()


def served_cert(writer: asyncio.StreamWriter) -> bytes:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    return der


async def refused(server: EchoServer, client: ssl.SSLContext) -> bool:
    """True if the server turns the client away (TLS 1.3 reports it after the handshake)."""
    try:
        reader, writer = await server.connect(client)
        answer = await echo(reader, writer, b"hello")
        writer.close()
    except (ssl.SSLError, ConnectionError):
        return True
    return answer != b"hello\n"


def der(issued: certutil.Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"], ids=["sni", "no-sni"])
def test_swap_serves_new_certificate_to_new_connections_only(
        pki: Pki, run: Callable[..., object], host: str) -> None:
    old_server = certutil.make_cert(pki.ca, "localhost", server=True, sans=("localhost", "127.0.0.1"))
    new_server = certutil.make_cert(pki.ca, "localhost", server=True, sans=("localhost", "127.0.0.1"))
    old_cert, old_key = old_server.write(pki.dir, "old-server")
    new_cert, new_key = new_server.write(pki.dir, "new-server")
    holder = ContextHolder(build_server_context(old_cert, old_key, pki.ca_file, True, None))
    client = certutil.client_context(pki.ca, pki.client)

    async def scenario() -> None:
        async with EchoServer(holder) as server:
            first_reader, first_writer = await server.connect(client, host)
            assert served_cert(first_writer) == der(old_server)
            assert await echo(first_reader, first_writer, b"one") == b"one\n"

            new_ctx = build_server_context(new_cert, new_key, pki.ca_file, True, None)
            holder.swap(new_ctx)
            assert holder.current is new_ctx

            second_reader, second_writer = await server.connect(client, host)
            assert served_cert(second_writer) == der(new_server)
            assert await echo(second_reader, second_writer, b"two") == b"two\n"
            # The connection made before the swap is still open and still on the old cert.
            assert await echo(first_reader, first_writer, b"three") == b"three\n"
            assert served_cert(first_writer) == der(old_server)
            assert server.peers == ["CN=alice", "CN=alice"]
            first_writer.close()
            second_writer.close()

    run(scenario())


def test_swap_applies_client_certificate_requirement(pki: Pki, run: Callable[..., object]) -> None:
    holder = ContextHolder(server_ctx(pki, require=False))
    anonymous = certutil.client_context(pki.ca)

    async def scenario() -> None:
        async with EchoServer(holder) as server:
            kept_reader, kept_writer = await server.connect(anonymous)
            assert await echo(kept_reader, kept_writer, b"before") == b"before\n"
            holder.swap(server_ctx(pki, require=True))
            assert await refused(server, anonymous)
            assert not await refused(server, certutil.client_context(pki.ca, pki.client))
            assert await echo(kept_reader, kept_writer, b"after") == b"after\n"
            kept_writer.close()

    run(scenario())


def test_swap_applies_new_crl(pki: Pki, run: Callable[..., object]) -> None:
    holder = ContextHolder(server_ctx(pki))
    client = certutil.client_context(pki.ca, pki.client)
    crl = certutil.write_crl(pki.dir / "ca.crl", pki.ca, [pki.client_issued])

    async def scenario() -> None:
        async with EchoServer(holder) as server:
            assert not await refused(server, client)
            holder.swap(server_ctx(pki, crl=crl))
            assert await refused(server, client)

    run(scenario())


def test_revoked_client_cannot_resume_its_session_after_reload(pki: Pki) -> None:
    holder = ContextHolder(server_ctx(pki))
    client = certutil.client_context(pki.ca, pki.client)
    before = certutil.handshake(holder.bound, client)
    assert before.ok, before
    holder.swap(server_ctx(pki, crl=certutil.write_crl(pki.dir / "ca.crl", pki.ca, [pki.client_issued])))
    after = certutil.handshake(holder.bound, client, session=before.session)
    assert not after.ok
    assert "revoked" in verify_message(after)

"""The providers' pooled HTTP/1.1 client (providers/client.py, providers/wire.py) against real
loopback servers that write raw bytes, so every framing and failure case is exact.

Every test runs on asyncio and on uvloop (the daemon's loop).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from securellm_bridge.config.providers import ProviderConfig
from securellm_bridge.providers.base import UpstreamFailure
from securellm_bridge.providers.client import UpstreamClient
from securellm_bridge.providers.http import TRANSPORT_ERRORS, post, read, transport_failure
from securellm_bridge.providers.messages import MalformedResponse

from . import certutil

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(("asyncio", {}), id="asyncio"),
                        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP (optionally TLS) server; ``handler(conn_id, reader, writer)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes]] = []  # (conn id, head, body)
        self.closed: list[int] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = self.connections
        self.connections += 1
        try:
            await self.handler(conn_id, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.append(conn_id)
            writer.close()

    async def read_request(self, conn_id: int, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        self.requests.append((conn_id, head, await reader.readexactly(length)))
        return True


@asynccontextmanager
async def serving(handler: Handler, ssl_ctx: ssl.SSLContext | None = None,
                  host: str = "127.0.0.1") -> AsyncIterator[Server]:
    server = Server(handler)
    srv = await asyncio.start_server(server._serve, host, 0, ssl=ssl_ctx)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()


@asynccontextmanager
async def serve_replies(*answers: bytes | list[bytes], close_after: bool = False,
                        ssl_ctx: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> AsyncIterator[Server]:
    """Each connection answers requests with ``answers`` in turn (a list is written piece by
    piece, a few ms apart, so the client reads it in parts), then idles until the client closes."""
    holder: list[Server] = []

    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            if not await holder[0].read_request(conn_id, reader):
                return
            for piece in (answer if isinstance(answer, list) else [answer]):
                writer.write(piece)
                await writer.drain()
                if isinstance(answer, list):
                    await asyncio.sleep(0.002)
            if close_after:
                return
        await reader.read()

    async with serving(handler, ssl_ctx, host) as server:
        holder.append(server)
        yield server


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), b"".join(e + b"\r\n" for e in extra),
                                                                  body)


def client(**kwargs: object) -> UpstreamClient:
    options: dict = {"max_connections": 4, "connect_timeout": 2.0, "read_timeout": 2.0, **kwargs}
    return UpstreamClient(**options)


async def get(c: UpstreamClient, server: Server, body: bytes = b"{}", scheme: str = "http",
              host: str = "127.0.0.1") -> tuple[int, bytes]:
    resp = await c.post(f"{scheme}://{host}:{server.port}/v1/x", body, {"Content-Type": "application/json"})
    return resp.status, await resp.read()


# ------------------------------------------------------------------------------ framing

async def test_content_length_and_request_head() -> None:
    async with serve_replies(ok(b'{"a":1}', b"X-Thing: yes")) as server:
        c = client()
        resp = await c.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", b'{"q":2}',
                            {"Authorization": "Bearer sk-secret"})
        assert (resp.status, resp.headers.get("x-thing"), resp.headers.get("X-THING")) == (200, "yes", "yes")
        assert "sk-secret" not in repr(resp) + repr(resp.headers) + repr(c)
        assert await resp.read() == b'{"a":1}'
        await c.close()
    _, head, body = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
    assert b"\r\nAuthorization: Bearer sk-secret\r\n" in head and b"\r\nContent-Length: 7\r\n" in head
    assert b"\r\nAccept-Encoding: identity\r\n" in head and body == b'{"q":2}'


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\nY: 2\r\n\r\n")


@pytest.mark.parametrize("split", [1, 2, 3, 7, 50])
async def test_chunked_split_at_awkward_boundaries(split: int) -> None:
    pieces = [CHUNKED[i:i + split] for i in range(0, len(CHUNKED), split)]
    async with serve_replies(pieces, ok(b"next")) as server:
        c = client()
        assert await get(c, server) == (200, b"hello 0123456789abcdef")
        assert await get(c, server) == (200, b"next")  # trailers consumed: the connection stays in step
        assert server.connections == 1
        await c.close()


async def test_chunked_iter_any_yields_as_chunks_arrive() -> None:
    async with serve_replies([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n",
                              b"2\r\nde\r\n", b"0\r\n\r\n"]) as server:
        c = client()
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        got = [chunk async for chunk in resp.iter_any()]
        assert b"".join(got) == b"abcde" and len(got) >= 2
        assert c.idle_connections == 1
        await c.close()


async def test_read_until_close_and_http10_not_reused() -> None:
    async with serve_replies(b"HTTP/1.0 200 OK\r\n\r\nall of it", close_after=True) as server:
        c = client()
        assert await get(c, server) == (200, b"all of it")
        assert (c.idle_connections, c.open_connections) == (0, 0)
        await c.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_body_is_decoded(encoding: str) -> None:
    plain = b'{"text": "' + b"squeeze " * 500 + b'"}'
    if encoding == "gzip":
        packed = gzip.compress(plain)
    elif encoding == "deflate":
        packed = zlib.compress(plain)
    else:
        z = zlib.compressobj(wbits=-15)
        packed = z.compress(plain) + z.flush()
    name = b"gzip" if encoding == "gzip" else b"deflate"
    chunked = b"HTTP/1.1 200 OK\r\nContent-Encoding: %b\r\nTransfer-Encoding: chunked\r\n\r\n" % name
    chunked += b"%x\r\n%b\r\n0\r\n\r\n" % (len(packed), packed)
    async with serve_replies(ok(packed, b"Content-Encoding: " + name), [chunked[:90], chunked[90:]]) as server:
        c = client()
        assert await get(c, server) == (200, plain)
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        assert b"".join([chunk async for chunk in resp.iter_any()]) == plain
        await c.close()


async def test_large_bodies_past_the_backpressure_mark() -> None:
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB: reading pauses at 1 MiB buffered until taken
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(big), big)
    async with serve_replies(ok(big), chunked, ok(big)) as server:
        c = client()
        assert await get(c, server) == (200, big)
        assert await get(c, server) == (200, big)
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        got = bytearray()
        async for chunk in resp.iter_any():
            got += chunk
            await asyncio.sleep(0)
        assert got == big and server.connections == 1
        await c.close()


def test_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from securellm_bridge.providers import messages
    monkeypatch.setattr(messages, "MAX_DECODED", 1000)
    decoder = messages.BodyDecoder("gzip")
    packed = gzip.compress(b"\0" * 1001)
    with pytest.raises(MalformedResponse):
        decoder.decompress(packed)
    assert messages.BodyDecoder("gzip").decompress(gzip.compress(b"\0" * 1000)) == b"\0" * 1000


async def test_interim_1xx_skipped_and_empty_bodies() -> None:
    async with serve_replies(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + ok(b"ok"),
                             b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                             ok(b"last")) as server:
        c = client()
        assert [await get(c, server) for _ in range(4)] == [(200, b"ok"), (204, b""), (200, b""), (200, b"last")]
        assert server.connections == 1
        await c.close()


# ------------------------------------------------------------------------------ pooling

async def test_keep_alive_reuses_the_same_connection() -> None:
    async with serve_replies(*(ok(b"%d" % i) for i in range(5))) as server:
        c = client()
        assert [await get(c, server) for _ in range(5)] == [(200, b"%d" % i) for i in range(5)]
        assert server.connections == 1 and {conn for conn, _, _ in server.requests} == {0}
        await c.close()


async def test_idle_connection_closed_by_server_is_not_reused() -> None:
    async with serve_replies(ok(b"first"), close_after=True) as server:
        c = client()
        assert await get(c, server) == (200, b"first")
        for _ in range(100):  # the server's FIN reaches the idle connection
            if c.open_connections == 0:
                break
            await asyncio.sleep(0.005)
        assert (c.open_connections, c.idle_connections) == (0, 0)
        assert await get(c, server) == (200, b"first")
        assert server.connections == 2
        await c.close()


async def test_keep_alive_timeout_from_the_server_is_honoured() -> None:
    async with serve_replies(ok(b"a", b"Keep-Alive: timeout=60"), ok(b"b", b"Keep-Alive: timeout=1, max=9"),
                             ok(b"c")) as server:
        c = client()
        assert await get(c, server) == (200, b"a")
        assert await get(c, server) == (200, b"b")  # reusable for 1 s less 1 s of margin: not at all
        assert await get(c, server) == (200, b"a")
        assert server.connections == 2 and c.open_connections == 1
        await c.close()


async def test_close_crossing_the_request_is_retried_on_a_new_connection() -> None:
    """The server drops a reused connection on reading the next request, answering nothing."""
    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await server.read_request(conn_id, reader):
            return
        writer.write(ok(b"c%d" % conn_id))
        if conn_id == 0:
            await reader.readuntil(b"\r\n\r\n")  # the second request: drop it unanswered
            return
        await reader.read()

    async with serving(handler) as server:
        c = client()
        assert await get(c, server) == (200, b"c0")
        assert await get(c, server) == (200, b"c1")
        await c.close()


async def test_connection_close_from_server_or_request() -> None:
    async with serve_replies(ok(b"bye", b"Connection: close"), ok(b"again")) as server:
        c = client()
        assert await get(c, server) == (200, b"bye")
        assert c.open_connections == 0
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {"Connection": "close"})
        assert await resp.read() == b"bye" and c.open_connections == 0
        await c.close()


async def test_pool_limit_queues_the_extra_caller() -> None:
    gate = asyncio.Event()

    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(conn_id, reader):
            await gate.wait()
            writer.write(ok(b"c%d" % conn_id))

    async with serving(handler) as server:
        c = client(max_connections=2)
        tasks = [asyncio.create_task(get(c, server)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert (server.connections, len(server.requests), c.open_connections) == (2, 2, 2)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert sorted(results) == [(200, b"c0"), (200, b"c0"), (200, b"c1")] or \
            sorted(results) == [(200, b"c0"), (200, b"c1"), (200, b"c1")]
        assert server.connections == 2
        await c.close()


async def test_cancelled_waiter_frees_its_place() -> None:
    gate = asyncio.Event()

    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(conn_id, reader):
            await gate.wait()
            writer.write(ok(b"done"))

    async with serving(handler) as server:
        c = client(max_connections=1)
        first = asyncio.create_task(get(c, server))
        second = asyncio.create_task(get(c, server))
        await asyncio.sleep(0.02)
        second.cancel()
        gate.set()
        assert await first == (200, b"done")
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await get(c, server) == (200, b"done")
        assert server.connections == 1
        await c.close()


async def test_waiter_woken_and_cancelled_at_once_passes_the_wakeup_on() -> None:
    async with serve_replies(*(ok(b"%d" % i) for i in range(3))) as server:
        c = client(max_connections=1)
        url = f"http://127.0.0.1:{server.port}/"
        resp = await c.post(url, b"", {})  # holds the only slot
        second = asyncio.create_task(get(c, server))
        third = asyncio.create_task(get(c, server))
        await asyncio.sleep(0.02)
        assert await resp.read() == b"0"  # releases: wakes `second`...
        second.cancel()  # ...which is cancelled before it runs: `third` must get the connection
        assert await asyncio.wait_for(third, 2) == (200, b"1")
        with pytest.raises(asyncio.CancelledError):
            await second
        await c.close()


async def test_release_before_the_body_ended_closes_the_connection() -> None:
    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(conn_id, reader):
            if conn_id == 0:  # the head, then the body late: it would be read as the next answer
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
                await asyncio.sleep(0.01)
                writer.write(ok(b"stale"))
            else:
                writer.write(ok(b"next"))

    async with serving(handler) as server:
        c = client()
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        resp.release()  # as a stream's aclose() does when its reader stopped early
        assert (c.open_connections, c.idle_connections) == (0, 0)
        await asyncio.sleep(0.02)
        assert await get(c, server) == (200, b"next")  # not bytes left over on a reused socket
        assert server.connections == 2
        await c.close()


@pytest.mark.parametrize("where", ["head", "body"])
async def test_cancellation_mid_response_closes_the_connection(where: str) -> None:
    async def handler(conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(conn_id, reader):
            if conn_id == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf" if where == "body" else b"HTTP/1.1 2")
                await reader.read()
                return
            writer.write(ok(b"fresh"))

    async with serving(handler) as server:
        c = client(max_connections=1)

        async def call() -> bytes:
            resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
            return await resp.read()

        task = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.open_connections == 0  # slot freed
        assert await get(c, server) == (200, b"fresh")  # on a new connection: the old one had unread bytes
        assert server.connections == 2
        await c.close()


async def test_stream_closed_early_is_not_reused() -> None:
    async with serve_replies([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                              b"3\r\ndef\r\n0\r\n\r\n"], ok(b"x")) as server:
        c = client()
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        it = resp.iter_any()
        assert await it.__anext__() == b"abc"
        await it.aclose()
        resp.release()
        assert c.open_connections == 0
        await c.close()


# ------------------------------------------------------------------------------ failures

async def test_read_timeout_maps_to_504() -> None:
    async with serve_replies([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", b""]) as server:
        c = client(read_timeout=0.1)
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        with pytest.raises(UpstreamFailure) as info:
            await read(resp, "p")
        assert (info.value.status, info.value.retryable) == (504, True)
        assert c.open_connections == 0
        await c.close()


async def test_connect_refused_is_retryable_502() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        c = client()
        with pytest.raises(UpstreamFailure) as info:
            await post(c, "p", f"http://127.0.0.1:{port}/", b"", {}, lambda s, b: (s, {}))
    assert (info.value.status, info.value.retryable) == (502, True)
    assert c.open_connections == 0
    await c.close()


async def test_eof_mid_body_is_retryable_502() -> None:
    async with serve_replies(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", close_after=True) as server:
        c = client()
        resp = await c.post(f"http://127.0.0.1:{server.port}/", b"", {})
        with pytest.raises(UpstreamFailure) as info:
            await read(resp, "p")
        assert (info.value.status, info.value.retryable) == (502, True) and "504" not in str(info.value)
        await c.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024),  # no end of head in sight
    b"HTTP/1.1 OK\r\n\r\n",
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
], ids=["big-head", "endless-head", "no-status", "not-http", "header-line", "two-lengths", "te-gzip",
        "bad-chunk", "brotli"])
async def test_malformed_responses_fail_retryable(answer: bytes) -> None:
    async with serve_replies(answer) as server:
        c = client()
        with pytest.raises(UpstreamFailure) as info:
            await read(await post(c, "p", f"http://127.0.0.1:{server.port}/", b"", {}, lambda s, b: (s, {})), "p")
        assert info.value.retryable and info.value.status == 502
        assert "upstream sent" in str(info.value)
        assert c.open_connections == 0
        await c.close()


async def test_error_status_with_retry_after() -> None:
    async with serve_replies(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}") as server:
        c = client()
        with pytest.raises(UpstreamFailure) as info:
            await post(c, "p", f"http://127.0.0.1:{server.port}/", b"", {}, lambda s, b: (s, {}))
        assert (info.value.status, info.value.retry_after) == (429, 3.0)
        assert c.idle_connections == 1  # the error body was read: the connection is reusable
        await c.close()


def test_transport_errors_map() -> None:
    assert isinstance(MalformedResponse("x"), TRANSPORT_ERRORS) and isinstance(TimeoutError(), TRANSPORT_ERRORS)
    assert transport_failure("p", TimeoutError()).status == 504
    assert transport_failure("p", ConnectionResetError()).status == 502


async def test_header_injection_rejected() -> None:
    c = client()
    for headers in ({"X": "a\r\nHost: evil"}, {"Host": "evil"}, {"Bad Name": "x"}):
        with pytest.raises(ValueError) as info:
            await c.post("http://127.0.0.1:1/", b"", headers)
        assert "evil" not in str(info.value)
    await c.close()


def test_make_client_from_config() -> None:
    from securellm_bridge.providers.http import make_client
    c = make_client(ProviderConfig(kind="openai", models=("m",), timeout_s=3.0, max_connections=7))
    assert (c._limit, c._connect_timeout, c._read_timeout) == (7, 3.0, 3.0)


# ------------------------------------------------------------------------------ TLS and addresses

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    directory: Path = tmp_path_factory.mktemp("tls")
    ca = certutil.make_ca()
    leaf = certutil.make_cert(ca, "localhost", server=True, sans=("localhost",))
    cert, key = leaf.write(directory, "server")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    return server, ssl.create_default_context(cafile=str(ca_file))


async def test_tls_with_hostname_check(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    async with serve_replies(ok(b"secure"), ok(b"again"), ssl_ctx=server_ctx) as server:
        c = client(ssl_context=client_ctx)
        assert await get(c, server, scheme="https", host="localhost") == (200, b"secure")
        assert await get(c, server, scheme="https", host="localhost") == (200, b"again")
        assert server.connections == 1
        _, head, _ = server.requests[0]
        assert b"\r\nHost: localhost:%d\r\n" % server.port in head
        await c.close()


async def test_tls_hostname_mismatch_fails(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    async with serve_replies(ok(b"secure"), ssl_ctx=server_ctx) as server:
        c = client(ssl_context=client_ctx)
        with pytest.raises(UpstreamFailure) as info:  # the certificate names localhost, not 127.0.0.1
            await post(c, "p", f"https://127.0.0.1:{server.port}/", b"", {}, lambda s, b: (s, {}))
        assert info.value.retryable and c.open_connections == 0
        with pytest.raises(ssl.SSLCertVerificationError):  # and an unknown CA is refused
            await client().post(f"https://localhost:{server.port}/", b"", {})
        await c.close()


async def test_ipv6_literal() -> None:
    try:
        cm = serve_replies(ok(b"six"), host="::1")
        server = await cm.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        c = client()
        resp = await c.post(f"http://[::1]:{server.port}/v1", b"", {})
        assert await resp.read() == b"six"
        assert b"\r\nHost: [::1]:%d\r\n" % server.port in server.requests[0][1]
        await c.close()
    finally:
        await cm.__aexit__(None, None, None)

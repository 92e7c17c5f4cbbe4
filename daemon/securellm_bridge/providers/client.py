"""A lean, pooled HTTP/1.1 client for the providers' upstream calls.

Why not aiohttp's client: it cost 60–100 µs of CPU per proxied request, the largest single
item on the bridge's request path. This one does only what the providers need: ``POST`` with a
``Content-Length`` body to a URL from configuration (never from a client: no SSRF), keep-alive
connections over plain TCP or TLS, and a response read whole (:meth:`Response.read`) or as it
arrives (:meth:`Response.iter_any`). Framing lives in :mod:`.wire`.

Pooling: at most ``max_connections`` connections (connecting, busy or idle) per client, callers
beyond that queue; idle connections are reused last-in first-out (the warmest socket, and older
ones can time out on the server). A connection goes back to the pool only after its response
body was read to the end; a response abandoned early (``close()``, a cancelled task at any
await) closes its connection, so unread bytes are never mistaken for the next response.

Failures are plain exceptions for ``providers/http.py`` to map: ``TimeoutError`` (connect or
read timeout), ``OSError`` (refused, reset, TLS), :class:`~.messages.TransportError` (malformed
response, closed client). No message or ``repr`` contains a header value: provider API keys
travel in headers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

from .messages import BodyDecoder, Headers, TransportError
from .wire import Connection

_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Set by the client itself; a caller's value would break the framing.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding"})
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"
#: Distinct (URL, headers) heads remembered; llama-server gets a new key on restart.
_HEAD_CACHE = 64

Origin = tuple[str, str, int]


class _Target:
    """A URL and header set encoded once: the request head up to the ``Content-Length`` value."""

    __slots__ = ("origin", "head", "close")

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError("expected an http:// or https:// URL")
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
        port = parts.port or _DEFAULT_PORTS[scheme]
        self.origin: Origin = (scheme, host, port)
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            authority += f":{port}"
        path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_PATH_SAFE)
        lines = [f"POST {path} HTTP/1.1", f"Host: {authority}"]
        names: set[str] = set()
        self.close = False
        for name, value in headers.items():
            lower = name.lower()
            if not _TOKEN.match(name) or lower in _RESERVED or any(c in value for c in "\r\n\0"):
                raise ValueError(f"request header {name!r} is reserved or has an invalid value")
            names.add(lower)
            if lower == "connection" and "close" in value.lower():
                self.close = True
            lines.append(f"{name}: {value}")
        if "accept-encoding" not in names:  # a compressed answer costs CPU on both ends of loopback
            lines.append("Accept-Encoding: identity")
        lines.append("Content-Length: ")
        try:
            self.head = "\r\n".join(lines).encode("latin-1")
        except UnicodeEncodeError:  # the codec's message would quote part of a header value
            raise ValueError("request headers must be Latin-1 text") from None


class Response:
    """An upstream response whose head has arrived; the body is read with :meth:`read` or
    :meth:`iter_any`. Call :meth:`release` (or :meth:`close`) when done with it."""

    __slots__ = ("status", "headers", "_conn", "_client", "_decoder")

    def __init__(self, client: UpstreamClient, conn: Connection) -> None:
        self.status = conn.status
        self.headers: Headers = conn.headers
        self._client = client
        self._conn: Connection | None = conn
        enc = dict.get(conn.headers, "content-encoding")
        self._decoder: BodyDecoder | None = BodyDecoder(enc) if enc and enc.strip().lower() != "identity" else None

    def __repr__(self) -> str:
        return f"Response(status={self.status})"

    async def read(self) -> bytes:
        """The whole (decoded) body; the connection then goes back to the pool."""
        conn = self._conn
        if conn is None:
            raise TransportError("the response was already released")
        parts: list[bytes] = []
        try:
            while not conn.complete:
                if conn.chunks:  # take them as they come: over PAUSE_AT buffered, reading stops
                    parts.append(conn.take())
                await conn.wait()
            body = conn.take()
            if parts:
                parts.append(body)
                body = b"".join(parts)
            if self._decoder is not None:
                body = self._decoder.decompress(body) + self._decoder.flush()
        except BaseException:
            self.close()
            raise
        self.release()
        return body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (framing removed, decoded); releases at the end."""
        conn = self._conn
        if conn is None:
            return
        decoder = self._decoder
        try:
            while True:
                if conn.chunks:
                    data = conn.take()
                    if decoder is not None:
                        data = decoder.decompress(data)
                    if data:
                        yield data
                elif conn.complete:
                    break
                else:
                    await conn.wait()
            if decoder is not None and (tail := decoder.flush()):
                yield tail
        except BaseException:  # an error, a cancelled reader or an early aclose(): bytes may be unread
            self.close()
            raise
        self.release()

    def release(self) -> None:
        """Done with the response: reuse the connection if the body ended, else close it."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._client._put(conn)

    def close(self) -> None:
        """Close the connection whatever its state."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._client._discard(conn)


class UpstreamClient:
    """The connection pool of one provider; ``post`` answers a :class:`Response` (any status)."""

    def __init__(self, *, max_connections: int = 64, connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._limit = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._count = 0  # connections counted against the limit, connecting ones included
        self._conns: set[Connection] = set()
        self._idle: dict[Origin, list[Connection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...]], _Target] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"UpstreamClient(connections={self._count}/{self._limit}, idle={self.idle_connections})"

    @property
    def open_connections(self) -> int:
        return self._count

    @property
    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Send ``body``; the response once its head has arrived.

        A reused connection that fails before a single response byte arrived was closed by the
        server while idle (the close crossed our request), so the request never reached the
        application: it is sent again on another connection, as browsers and Go's client do.
        """
        key = (url, tuple(headers.items()))
        target = self._targets.get(key)
        if target is None:
            target = _Target(url, headers)
            if len(self._targets) >= _HEAD_CACHE:
                self._targets.clear()
            self._targets[key] = target
        data = b"%b%d\r\n\r\n%b" % (target.head, len(body), body)
        while True:
            conn = await self._acquire(target.origin)
            try:
                conn.send(data)
                await conn.read_head()
                resp = Response(self, conn)
            except ConnectionError:
                stale = conn.reused and not conn.got_bytes
                self._discard(conn)
                if stale:
                    continue
                raise
            except BaseException:
                self._discard(conn)
                raise
            if target.close:
                conn.keep_alive = False
            return resp

    async def close(self) -> None:
        """Close every connection (in-flight responses fail) and refuse further requests."""
        self._closed = True
        for conn in list(self._conns):
            self._discard(conn, wake=False)
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(TransportError("the upstream client is closed"))
        await asyncio.sleep(0)  # let the transports run connection_lost

    # ---------------------------------------------------------------- pool

    async def _acquire(self, origin: Origin) -> Connection:
        first = True
        while True:
            if self._closed:
                raise TransportError("the upstream client is closed")
            idle = self._idle.get(origin)
            if idle:
                now = asyncio.get_running_loop().time()
                while idle:
                    conn = idle.pop()
                    conn.idle = False
                    if not conn.closed and conn.expires > now:
                        return conn
                    self._discard(conn, wake=False)
            if self._count < self._limit:
                return await self._connect(origin)
            if self._evict_idle():
                continue
            fut = asyncio.get_running_loop().create_future()
            if first:
                self._waiters.append(fut)
            else:  # woken but beaten to the slot: keep our place at the head of the queue
                self._waiters.appendleft(fut)
            first = False
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # woken and cancelled at once: pass the wakeup on
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise

    def _evict_idle(self) -> bool:
        """At the limit with idle connections to another origin (llama-server moved port): close one."""
        for idle in self._idle.values():
            if idle:
                self._discard(idle[0], wake=False)
                return True
        return False

    async def _connect(self, origin: Origin) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        self._count += 1  # the slot is taken before the first await
        try:
            ctx = None
            if scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ctx = self._ssl
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop, origin, self._read_timeout, self._discard), host, port,
                        ssl=ctx, server_hostname=host if ctx is not None else None)
            except TimeoutError:
                raise TimeoutError("upstream connect timed out") from None
        except BaseException:
            self._count -= 1
            self._wake_one()
            raise
        self._conns.add(conn)
        if self._closed:
            self._discard(conn, wake=False)
            raise TransportError("the upstream client is closed")
        return conn

    def _put(self, conn: Connection) -> None:
        if self._closed or conn.closed or not conn.complete or not conn.keep_alive or not conn.counted:
            self._discard(conn)
            return
        conn.to_idle()
        conn.expires = float("inf")
        keep_alive = dict.get(conn.headers, "keep-alive")
        if keep_alive:  # "timeout=5, max=100": stop reusing a second before the server gives up
            for part in keep_alive.split(","):
                name, _, value = part.strip().partition("=")
                if name.lower() == "timeout" and value.strip().isdigit():
                    conn.expires = asyncio.get_running_loop().time() + int(value) - 1
        conn.idle = True
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = []
        idle.append(conn)
        self._wake_one()

    def _discard(self, conn: Connection, *, wake: bool = True) -> None:
        if conn.idle:
            conn.idle = False
            idle = self._idle.get(conn.origin)
            if idle is not None and conn in idle:
                idle.remove(conn)
        if conn.complete and not conn.chunks:
            conn.close()
        else:
            conn.abort()
        if conn.counted:
            conn.counted = False
            self._count -= 1
            self._conns.discard(conn)
            if wake:
                self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

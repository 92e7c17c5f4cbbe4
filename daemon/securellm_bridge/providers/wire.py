"""HTTP/1.1 response framing for the upstream client: one :class:`Connection` per socket.

Why hand-written: aiohttp's client spent 60–100 µs of CPU per proxied request, more than the
rest of the bridge's request path. A connection here is a bare :class:`asyncio.Protocol`
(cheap on uvloop): the head is parsed once with ``bytes.find``/``split``, chunked framing is
removed as bytes arrive, and the one reader of the response waits with one future and one
``call_later`` timer (the read timeout between bytes) per wait, not a task per read.

Strict where laxness would be unsafe: a head over :data:`MAX_HEAD`, a bad status line, a bad
header line, a ``Content-Length`` that is not one decimal number, an unknown transfer coding or
a bad chunk size all fail the response (:class:`MalformedResponse`) and the connection is never
reused. Error messages never contain header values (upstream headers may echo API keys).
"""

from __future__ import annotations

import asyncio
import re
from typing import Callable

from .messages import Headers, MalformedResponse, TransportError

#: Most bytes of a response head (status line + headers), and of a chunked body's trailers.
MAX_HEAD = 64 * 1024
#: Longest chunk-size line (size + extensions).
MAX_CHUNK_LINE = 4096
#: Body bytes buffered for a slow reader before the socket stops being read (backpressure).
PAUSE_AT = 1 << 20

_IDLE, _HEAD, _BODY, _DONE = range(4)
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)
#: A chunk-size line: 1-16 hex digits, optional whitespace and chunk extensions (ignored).
_SIZE_LINE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n").match


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying at most one request at a time.

    The pool owns it; a :class:`~.client.Response` reads from it. ``complete`` turns true when
    the whole body has arrived; only then may the pool reuse it (if ``keep_alive``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int], read_timeout: float,
                 on_idle_lost: Callable[["Connection"], None]) -> None:
        self.loop = loop
        self.origin = origin
        self.read_timeout = read_timeout
        self._on_idle_lost = on_idle_lost
        self.transport: asyncio.Transport | None = None
        #: True once the socket is closing or closed: never hand it out again.
        self.closed = False
        #: Set by the pool while the connection sits in its idle list.
        self.idle = False
        #: Whether the pool still counts this connection against ``max_connections``.
        self.counted = True
        #: Whether the connection already carried a response (a stale-connection failure on a
        #: reused connection is retried by the client).
        self.reused = False
        #: ``loop.time()`` after which an idle connection is not reused (server's Keep-Alive timeout).
        self.expires = float("inf")
        self._buf = bytearray()
        self._phase = _IDLE
        self._mode = _NONE
        self._remaining = 0
        self._cstate = _SIZE
        self._trailer_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.status = 0
        self.headers: Headers = Headers()
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = True
        self.got_bytes = False
        self.error: BaseException | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._phase == _BODY and self._mode == _UNTIL_CLOSE and exc is None:
            self._finish()
        elif self._phase in (_HEAD, _BODY) and self.error is None:
            self.error = ConnectionResetError("upstream closed the connection before the response ended")
        self._wake()
        if self.idle:
            self._on_idle_lost(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        phase = self._phase
        try:
            if phase == _BODY:
                self._feed(data)
            elif phase == _HEAD:
                self._buf += data
                self._parse_head()
            else:  # bytes nobody asked for: the connection is out of step, never reuse it
                self.keep_alive = False
                self.abort()
                return
        except MalformedResponse as exc:
            self.error = exc
            self.keep_alive = False
            self.abort()
        self._wake()

    # ---------------------------------------------------------------- used by the client

    def send(self, data: bytes) -> None:
        """Start a request: reset the response state and write the request bytes."""
        self._phase = _HEAD
        self._mode = _NONE
        self.status = 0
        self.complete = False
        self.got_bytes = False
        self.error = None
        self.chunks = []
        self.buffered = 0
        if self.closed:  # closed by the server since it was handed out: fail at once, not on timeout
            self.error = ConnectionResetError("upstream closed the connection")
            return
        self.transport.write(data)  # type: ignore[union-attr]

    def to_idle(self) -> None:
        """Between responses: drop what the reader left unread, read the socket again (so an
        idle close by the server is seen at once)."""
        self._phase = _IDLE
        self.chunks = []
        self.buffered = 0
        self.reused = True
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    async def wait(self) -> None:
        """Wait for more of the response, at most ``read_timeout`` seconds; raise its failure."""
        if self.error is not None:
            raise self.error
        fut = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(self.read_timeout, self._timed_out, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    async def read_head(self) -> None:
        while self._phase == _HEAD:
            await self.wait()
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        """The body bytes that arrived since the last call (chunked framing removed)."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    def abort(self) -> None:
        """Drop the socket now (unread bytes or a broken exchange: no graceful close needed)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---------------------------------------------------------------- parsing

    def _timed_out(self, fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.set_exception(TimeoutError("upstream read timed out"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _parse_head(self) -> None:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end > MAX_HEAD:
                if len(buf) > MAX_HEAD:
                    raise MalformedResponse("response headers larger than 64 KiB")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            line = lines[0]
            if (len(line) < 12 or line[:7] != b"HTTP/1." or line[8] != 32 or not line[9:12].isdigit()
                    or (len(line) > 12 and line[12] != 32)):
                raise MalformedResponse("a malformed status line")
            status = int(line[9:12])
            headers = Headers()
            for raw in lines[1:]:
                name, sep, value = raw.partition(b":")
                if not sep or not name or name[-1] in b" \t" or raw[0] in b" \t":
                    raise MalformedResponse("a malformed header line")
                key = name.decode("latin-1").lower()
                val = value.strip(b" \t").decode("latin-1")
                old = dict.get(headers, key)
                dict.__setitem__(headers, key, val if old is None else f"{old}, {val}")
            if status < 200:
                if status == 101 or status < 100:
                    raise MalformedResponse(f"an unexpected HTTP {status} response")
                continue  # 1xx interim response: the final one follows
            self.status = status
            self.headers = headers
            break
        self.keep_alive = line[7] == 49 and "close" not in (dict.get(headers, "connection") or "").lower()
        te = dict.get(headers, "transfer-encoding")
        cl = dict.get(headers, "content-length")
        if status in (204, 304):
            self._phase = _BODY
            self._finish()
            return
        if te is not None:
            if te.strip().lower() != "chunked":
                raise MalformedResponse("an unsupported transfer coding")
            if cl is not None:  # RFC 9112 6.3: framing was ambiguous, do not reuse
                self.keep_alive = False
            self._mode = _CHUNKED
            self._cstate = _SIZE
            self._trailer_bytes = 0
        elif cl is not None:
            if not (cl.isascii() and cl.isdigit()):
                values = {v.strip() for v in cl.split(",")}
                cl = values.pop() if len(values) == 1 else ""
                if not (cl.isascii() and cl.isdigit()):
                    raise MalformedResponse("an invalid Content-Length")
            self._mode = _LENGTH
            self._remaining = int(cl)
        else:
            self._mode = _UNTIL_CLOSE
            self.keep_alive = False
        self._phase = _BODY
        if self._mode == _LENGTH and self._remaining == 0:
            self._finish()
        elif buf:
            rest = bytes(buf)
            buf.clear()
            self._feed(rest)

    def _feed(self, data: bytes) -> None:
        mode = self._mode
        if mode == _LENGTH:
            remaining = self._remaining
            n = len(data)
            if n < remaining:
                self._remaining = remaining - n
                self._push(data)
                return
            if n > remaining:  # more than announced: the connection is out of step
                self.keep_alive = False
                data = data[:remaining]
            self._remaining = 0
            self._push(data)
            self._finish()
        elif mode == _CHUNKED:
            self._buf += data
            self._chunks()
        elif mode == _UNTIL_CLOSE:
            self._push(data)
        else:
            self.keep_alive = False

    def _chunks(self) -> None:
        """Decode the chunked framing of what is buffered. Parses by index and trims the buffer
        once, and hands the reader one piece per read however many chunks it held (an SSE
        stream is one HTTP chunk per event: 13+ per answer)."""
        buf = self._buf
        pos, end = 0, len(buf)
        out: list[bytes] = []
        while pos < end:
            state = self._cstate
            if state == _DATA:
                take = min(end - pos, self._remaining)
                out.append(bytes(buf[pos:pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._cstate = _DATA_END
            elif state == _SIZE:
                # Whole chunks, the common case, in a tight loop: size line, data, CRLF.
                found = _SIZE_LINE(buf, pos)
                while found is not None:
                    size = int(found.group(1), 16)
                    start = found.end()
                    stop = start + size
                    if size == 0 or stop + 2 > end:
                        break
                    if buf[stop:stop + 2] != b"\r\n":
                        raise MalformedResponse("a chunk not followed by CRLF")
                    out.append(bytes(buf[start:stop]))
                    pos = stop + 2
                    found = _SIZE_LINE(buf, pos)
                if found is None:
                    nl = buf.find(b"\r\n", pos)
                    if nl >= 0 or end - pos > MAX_CHUNK_LINE:
                        raise MalformedResponse("a malformed chunk size" if nl >= 0 else
                                                "a chunk-size line that is too long")
                    break
                pos = found.end()
                self._remaining = int(found.group(1), 16)
                self._cstate = _DATA if self._remaining else _TRAILER
            elif state == _DATA_END:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise MalformedResponse("a chunk not followed by CRLF")
                pos += 2
                self._cstate = _SIZE
            else:  # trailer fields, skipped, until the empty line
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if self._trailer_bytes + end - pos > MAX_HEAD:
                        raise MalformedResponse("trailers larger than 64 KiB")
                    break
                self._trailer_bytes += nl + 2 - pos
                if self._trailer_bytes > MAX_HEAD:
                    raise MalformedResponse("trailers larger than 64 KiB")
                last = nl == pos
                pos = nl + 2
                if last:
                    if pos < end:
                        self.keep_alive = False
                    buf.clear()
                    if out:
                        self._push(out[0] if len(out) == 1 else b"".join(out))
                    self._finish()
                    return
        del buf[:pos]
        if out:
            self._push(out[0] if len(out) == 1 else b"".join(out))

    def _push(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
            if self.buffered > PAUSE_AT and not self._paused and not self.closed:
                self._paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]

    def _finish(self) -> None:
        self._phase = _DONE
        self.complete = True
        if self._buf:
            self.keep_alive = False
            self._buf.clear()

"""A lean HTTP/1.1 load generator over (m)TLS with keep-alive, for the proxy benchmark.

Each connection is a bare :class:`asyncio.Protocol` on uvloop that writes a pre-built
request and parses just enough of the answer (status, ``Content-Length`` or chunked
framing) to know when it is complete; no HTTP library sits on the client's side of the
measurement. Connections are opened (TLS handshake included) before the clock starts and
stay open: every request reuses one (keep-alive).

* :func:`saturate`: ``connections`` closed loops (one request in flight per connection) for
  ``duration`` seconds after a warm-up; completed requests per second and their latencies.
* :func:`paced`: an open loop at a fixed rate (one request every ``1/rate`` s, on any idle
  connection): latency to the first body byte and to the last one.

Answers are checked: status 200 and a complete body (``chat.completion`` JSON, or SSE ending in
``data: [DONE]``); anything else counts as an error.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .procfs import cpu_seconds

perf = time.perf_counter


class ProtocolError(Exception):
    pass


class HttpConn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, float, float, bytes]] | None = None
        self.state = 0  # 0: head, 1: Content-Length body, 2: chunked body
        self.status = 0
        self.remaining = 0
        self.first = 0.0
        self.parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, float, float, bytes]]:
        """Send ``data``; the future gives (status, first body byte time, last byte time, body)."""
        fut = self.waiter = self.loop.create_future()
        if self.transport is None:
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.state = 0
        self.first = 0.0
        self.parts = []
        self.transport.write(data)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = perf()
        buf = self.buf
        buf += data
        try:
            if self.state == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[:end + 4]
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    self.remaining = int(head[at + 17:stop if stop >= 0 else len(head)])
                    self.state = 1
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.state = 2
                else:
                    raise ProtocolError("an answer without Content-Length or chunked framing")
            if buf and not self.first:
                self.first = now
            if self.state == 1:
                if len(buf) < self.remaining:
                    return
                n = self.remaining
                body = bytes(buf[:n])
                del buf[:n]
                if not self.first:
                    self.first = now
                self._done(body, now)
                return
            while True:  # chunked
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(buf[:nl]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < nl + 4:
                        return
                    del buf[:nl + 4]  # no trailers
                    self._done(b"".join(self.parts), now)
                    return
                if len(buf) < nl + 4 + size:
                    return
                self.parts.append(bytes(buf[nl + 2:nl + 2 + size]))
                del buf[:nl + 4 + size]
        except (ValueError, ProtocolError) as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ProtocolError(str(exc)))
            self.close()

    def _done(self, body: bytes, now: float) -> None:
        waiter = self.waiter
        self.waiter = None
        self.state = 0
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, self.first or now, now, body))


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def request(self, path: str, body: bytes) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: */*",
                 "User-Agent: securellm-bench/1", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


async def open_conns(target: Target, n: int) -> list[HttpConn]:
    loop = asyncio.get_running_loop()

    async def one() -> HttpConn:
        _, proto = await loop.create_connection(lambda: HttpConn(loop), target.host, target.port, ssl=target.ssl)
        return proto

    return list(await asyncio.gather(*(one() for _ in range(n))))


Validator = Callable[[bytes], bool]


def is_completion(body: bytes) -> bool:
    return body[:1] == b"{" and b'"chat.completion"' in body and b'"usage"' in body


def is_stream(body: bytes) -> bool:
    return body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")


@dataclass
class SatResult:
    rps: float
    errors: int
    latencies: list[float]
    cpu: dict[str, float] = field(default_factory=dict)  # name -> share of one core


@dataclass
class PacedResult:
    ttfb: list[float]
    ttlb: list[float]
    errors: int
    late: int


async def saturate(target: Target, request: bytes, validate: Validator, *, connections: int, duration: float,
                   warmup: float, watch: dict[str, int] | None = None) -> SatResult:
    conns = await open_conns(target, connections)
    state = {"measuring": False, "stop": False}
    window = [0.0, math.inf]
    latencies: list[float] = []
    counts = [0, 0]  # completed in window, errors

    async def worker(c: HttpConn) -> None:
        while not state["stop"]:
            t0 = perf()
            try:
                status, _, end, body = await c.request(request)
            except (ConnectionError, ProtocolError):
                counts[1] += 1
                return
            if status != 200 or not validate(body):
                counts[1] += 1
            elif window[0] <= end <= window[1]:
                counts[0] += 1
                latencies.append(end - t0)

    tasks = [asyncio.create_task(worker(c)) for c in conns]
    await asyncio.sleep(warmup)
    pids = {**(watch or {}), "loadgen": os.getpid()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    window[0] = perf()
    await asyncio.sleep(duration)
    window[1] = perf()
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    state["stop"] = True
    await asyncio.gather(*tasks)
    for c in conns:
        c.close()
    elapsed = window[1] - window[0]
    # Throughput: the answers completed inside the window.
    return SatResult(len(latencies) / elapsed, counts[1], latencies,
                     {name: (cpu1[name] - cpu0[name]) / elapsed for name in pids})


async def paced(target: Target, request: bytes, validate: Validator, *, rate: float, duration: float,
                connections: int = 4, warmup_requests: int = 8) -> PacedResult:
    conns = await open_conns(target, connections)
    idle = deque(conns)
    for _ in range(max(1, warmup_requests // connections)):
        await asyncio.gather(*(c.request(request) for c in conns))
    ttfb: list[float] = []
    ttlb: list[float] = []
    errors = 0
    late = 0
    extra: list[HttpConn] = []

    async def one(c: HttpConn) -> None:
        nonlocal errors
        t0 = perf()
        try:
            status, first, end, body = await c.request(request)
        except (ConnectionError, ProtocolError):
            errors += 1
            return
        if status != 200 or not validate(body):
            errors += 1
        else:
            ttfb.append(first - t0)
            ttlb.append(end - t0)
        idle.append(c)

    n = max(1, int(rate * duration))
    start = perf() + 0.02
    tasks = []
    for i in range(n):
        delay = start + i / rate - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle:  # every connection busy: the target is slower than the rate
            late += 1
            (c,) = await open_conns(target, 1)
            extra.append(c)
            idle.append(c)
        tasks.append(asyncio.create_task(one(idle.popleft())))
    await asyncio.gather(*tasks)
    for c in conns + extra:
        c.close()
    return PacedResult(ttfb, ttlb, errors, late)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]

"""``bench_local``'s client: chat requests that a tiny random model answers with text at once,
timed to the first content token over loadgen's raw connection."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from dataclasses import dataclass

from . import loadgen
from .bridges import PATH
from .loadgen import HttpConn, Target, perf

PROMPT = "Say hello to the benchmark in one short sentence, please."
MAX_TOKENS = 4
_CONTENT = re.compile(rb'"content":"[^"]')


@functools.cache
def text_tokens_only() -> dict[str, int]:
    """``logit_bias`` that bans every token but the printable ones: a random-weight model may
    otherwise start with byte tokens that form no complete UTF-8 character (llama-server sends
    no content until they do) or with control tokens (no text). So the first generated token
    is the first content."""
    from gguf import TokenType

    from tests.gguf_models import vocabulary

    return {str(i): -100 for i, kind in enumerate(vocabulary()[2]) if kind != TokenType.NORMAL}


def body(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
                       "logit_bias": text_tokens_only(), "stream": stream}).encode()


class TokenConn(HttpConn):
    """A loadgen connection that also notes when the first content token arrives."""

    token_at = 0.0

    def request(self, data: bytes) -> "asyncio.Future[tuple[int, float, float, bytes]]":
        self.token_at = 0.0
        self._seen = bytearray()
        return super().request(data)

    def data_received(self, data: bytes) -> None:
        if not self.token_at:
            now = perf()
            self._seen += data
            if _CONTENT.search(self._seen):
                self.token_at = now
        super().data_received(data)


async def connect(target: Target) -> TokenConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: TokenConn(loop), target.host, target.port, ssl=target.ssl)
    return conn


@dataclass
class Timed:
    status: int
    start: float
    first_byte: float
    token: float
    end: float
    body: bytes

    def check(self, what: str, stream: bool) -> "Timed":
        ok = loadgen.is_stream(self.body) if stream else loadgen.is_completion(self.body)
        if self.status != 200 or not ok or (stream and not self.token):
            raise RuntimeError(f"{what}: status {self.status}, body {self.body[:400]!r}")
        return self


async def send(conn: TokenConn, target: Target, model: str, stream: bool) -> Timed:
    data = target.request(PATH, body(model, stream))
    t0 = perf()
    status, first, end, answer = await conn.request(data)
    return Timed(status, t0, first, conn.token_at, end, answer)


class Client:
    """Sequential requests to one target on a kept-alive connection, opened before the clock.

    llama-server closes the connection after every streamed answer, so a client of it needs a new
    one per stream (``fresh``); the bridge keeps its client connections open (and reconnects to
    llama-server itself).
    """

    def __init__(self, target: Target, fresh: bool = False) -> None:
        self.target = target
        self.fresh = fresh
        self.conn: TokenConn | None = None

    async def __call__(self, model: str, stream: bool) -> Timed:
        if self.conn is None or self.conn.transport is None or (self.fresh and stream):
            self.close()
            self.conn = await connect(self.target)
        return await send(self.conn, self.target, model, stream)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

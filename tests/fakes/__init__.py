"""Fake upstreams (OpenAI, Anthropic, Ollama) that speak the real wire protocols.

Each module exposes ``make_app(behaviour) -> aiohttp.web.Application`` and can be run as
``python -m tests.fakes.<name> --host 127.0.0.1 --port 0``: it prints ``LISTENING <port>``
and serves until SIGTERM. Answers are deterministic functions of the request (the reply
echoes the last message) so that tests can assert on them; :mod:`.behaviour` scripts faults.

This module holds what the three fakes share: the reply plan, token counting, embeddings,
compact JSON, and the two ways of serving an app (in-process :func:`running`, or :func:`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .behaviour import Behaviour

_PIECES = re.compile(r"\s*\S+|\s+$")


@dataclass(frozen=True, slots=True)
class Reply:
    """What a fake model answers: streamed ``pieces`` (one token each) and why it stopped."""

    pieces: tuple[str, ...]
    finish: str  # "stop" | "length" | "stop_sequence"
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def plan_reply(prompt: str, *, max_tokens: int | None = None, stop: Sequence[str] = ()) -> Reply:
    """``echo: <prompt>``, cut at the first stop sequence and at ``max_tokens`` pieces."""
    text = f"echo: {prompt}"
    cut, hit = len(text), None
    for seq in stop:
        at = text.find(seq) if seq else -1
        if 0 <= at < cut:
            cut, hit = at, seq
    pieces = tuple(_PIECES.findall(text[:cut]))
    if max_tokens is not None and len(pieces) > max_tokens:
        return Reply(pieces[:max_tokens], "length")
    return Reply(pieces, "stop_sequence" if hit is not None else "stop", hit)


def count_tokens(text: str) -> int:
    """The fakes' tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of an OpenAI- or Anthropic-style message content (string or parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(content_text(p.get("text", p.get("content")))
                        for p in content if isinstance(p, dict))
    return ""


def dumps(obj: Any) -> bytes:
    """Compact JSON, as the real upstreams send it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic vector; its values are exact in float32 (multiples of 1/128)."""
    out: list[float] = []
    seed = text.encode()
    while len(out) < dimensions:
        seed = hashlib.sha256(seed).digest()
        out.extend((b - 128) / 128 for b in seed)
    return out[:dimensions]


@contextlib.asynccontextmanager
async def running(app: web.Application, host: str = "127.0.0.1",
                  port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on the running loop; yields its base URL (``http://host:port``)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


def main(make_app: Callable[[Behaviour], web.Application], argv: Sequence[str] | None = None) -> None:
    """Command line of every fake: serve until SIGTERM/SIGINT, announcing the bound port."""
    parser = argparse.ArgumentParser(description="Run a fake LLM upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="environment variable holding the API key to require")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--models", help="comma-separated model names to serve")
    parser.add_argument("--fault", action="append", default=[], help="queue a fault script")
    args = parser.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and api_key is None:
        parser.error(f"environment variable {args.api_key_env} is not set")
    try:
        behaviour = Behaviour(api_key=api_key, delay=args.delay, chunk_delay=args.chunk_delay,
                              faults=args.fault,
                              models=args.models.split(",") if args.models else None)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(make_app(behaviour), args.host, args.port))
    else:
        uvloop.run(_serve(make_app(behaviour), args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(app, host, port) as url:
        sys.stdout.write(f"LISTENING {url.rsplit(':', 1)[1]}\n")
        sys.stdout.flush()
        await stop.wait()

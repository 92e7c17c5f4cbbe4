"""Scripted failure injection and request recording, shared by every fake upstream.

A :class:`Behaviour` is the one knob of a fake: the API key it expects, a delay before each
answer and between stream chunks, the models it serves, and a FIFO of faults that are
consumed one per (non-control) request. Fault scripts:

* ``"500"``, ``"503"``, ``"529"`` … any HTTP status 400-599: answer it, in the vendor's shape;
* ``"429:<retry_after>"``: 429 with a ``Retry-After`` header (seconds);
* ``"timeout"``: sleep until the client gives up (or ``timeout_sleep`` passes), then answer;
* ``"reset"``: abort the TCP connection (RST) before answering;
* ``"reset_after:<n>"``: stream ``n`` chunks, then abort the connection;
* ``"error_after:<n>"``: stream ``n`` chunks, then the vendor's in-stream error and the end;
* ``"stall_after:<n>"``: stream ``n`` chunks, then go silent until the client gives up;
* ``"malformed"``: an invalid JSON body, or a stream whose second chunk is not valid.

Faults that only make sense in a stream (``*_after``) are ignored by non-streamed answers.
Each fake also serves ``POST /_fake/script`` (``{"faults": [...], "delay": s,
"chunk_delay": s}``), ``GET /_fake/requests`` and ``POST /_fake/reset`` so that a fake run
as a subprocess can be driven over HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "api-key"})
_STREAM_ONLY = frozenset({"reset_after", "error_after", "stall_after"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted fault; see the module docstring for the script syntax."""

    kind: str  # status | timeout | reset | malformed | reset_after | error_after | stall_after
    status: int = 0
    retry_after: float | None = None
    after: int = 0

    @classmethod
    def parse(cls, spec: str) -> Fault:
        head, _, arg = spec.partition(":")
        if head in ("timeout", "reset", "malformed") and not arg:
            return cls(head)
        if head in _STREAM_ONLY and arg.isdigit():
            return cls(head, after=int(arg))
        if head.isdigit() and 400 <= int(head) <= 599:
            if not arg:
                return cls("status", status=int(head))
            try:
                retry_after = float(arg)
            except ValueError:
                retry_after = -1.0
            if retry_after >= 0:
                return cls("status", status=int(head), retry_after=retry_after)
        raise ValueError(f"unknown fault script {spec!r}")

    @property
    def stream_only(self) -> bool:
        return self.kind in _STREAM_ONLY


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the fake received it, without its credentials."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers, "body": self.body}


class Behaviour:
    """What a fake expects and how it misbehaves; safe to share between fakes."""

    def __init__(self, *, api_key: str | None = None, delay: float = 0.0, chunk_delay: float = 0.0,
                 faults: Iterable[str] = (), models: Sequence[str] | None = None,
                 timeout_sleep: float = 600.0, max_recorded: int = 10_000) -> None:
        self.api_key = api_key
        self.delay = delay
        self.chunk_delay = chunk_delay
        #: Model names served; None lets each fake use its own realistic default list.
        self.models = tuple(models) if models is not None else None
        self.timeout_sleep = timeout_sleep
        self.stopping = False
        self._faults: deque[Fault] = deque()
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.script(faults)

    def __repr__(self) -> str:
        key = "<redacted>" if self.api_key is not None else None
        return (f"Behaviour(api_key={key}, delay={self.delay}, chunk_delay={self.chunk_delay}, "
                f"faults={[f.kind for f in self._faults]}, models={self.models})")

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults (all parsed first: a bad script queues nothing)."""
        parsed = [Fault.parse(spec) for spec in faults]
        self._faults.extend(parsed)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def next_fault(self) -> Fault | None:
        return self._faults.popleft() if self._faults else None

    def key_matches(self, presented: str | None) -> bool:
        """True when no key is expected or ``presented`` is exactly the expected one."""
        if self.api_key is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self.api_key.encode())

    def record(self, request: web.Request, body: Any) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
        self._requests.append(RecordedRequest(request.method, request.path, headers, body))

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._requests)

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        self._faults.clear()
        self._requests.clear()


async def begin(request: web.Request, behaviour: Behaviour) -> tuple[Any, Fault | None]:
    """Start handling a request: parse and record its JSON body (None when absent or invalid),
    wait the delay, and take the next fault. ``timeout`` is served here (the request then
    goes on normally if the client is still there); so is ``reset``, by raising
    :class:`ConnectionAborted`. Every other fault is returned for the handler to apply."""
    body: Any = None
    if request.can_read_body:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
    behaviour.record(request, body)
    if behaviour.delay > 0:
        await asyncio.sleep(behaviour.delay)
    fault = behaviour.next_fault()
    if fault is not None and fault.kind == "timeout":
        if await sleep_until_gone(request, behaviour):
            raise ConnectionAborted
        return body, None
    if fault is not None and fault.kind == "reset":
        abort_connection(request)
        raise ConnectionAborted
    return body, fault


class ConnectionAborted(Exception):
    """The fake reset the connection; there is nothing left to answer."""


@web.middleware
async def _aborted_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionAborted:
        return web.Response()


def abort_connection(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), as a crashing upstream would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def sleep_until_gone(request: web.Request, behaviour: Behaviour) -> bool:
    """Sleep up to ``timeout_sleep``, returning early once the client hung up or the fake
    stops. True when the client is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + behaviour.timeout_sleep
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        if loop.time() >= deadline or behaviour.stopping:
            return False
        await asyncio.sleep(0.02)


async def stream(request: web.Request, behaviour: Behaviour, fault: Fault | None,
                 frames: Sequence[bytes], *, content_type: str, error_frame: bytes,
                 malformed_frame: bytes, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send ``frames`` as a 200 streamed body, applying a stream fault at its position."""
    resp = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await resp.prepare(request)
    if fault is None and behaviour.chunk_delay <= 0:
        await resp.write(b"".join(frames))
        await resp.write_eof()
        return resp
    if fault is not None and fault.kind == "malformed":
        frames = [*frames[:1], malformed_frame]
    for n in range(len(frames) + 1):
        if fault is not None and fault.stream_only and fault.after == n:
            if fault.kind == "reset_after":
                abort_connection(request)
                return resp
            if fault.kind == "error_after":
                await resp.write(error_frame)
                break
            await sleep_until_gone(request, behaviour)
            return resp
        if n == len(frames):
            break
        if n and behaviour.chunk_delay > 0:
            await asyncio.sleep(behaviour.chunk_delay)
        await resp.write(frames[n])
    await resp.write_eof()
    return resp


def status_headers(fault: Fault) -> dict[str, str]:
    """Headers of a scripted status answer (``Retry-After`` for ``429:<s>``)."""
    if fault.retry_after is None:
        return {}
    return {"Retry-After": f"{fault.retry_after:g}"}


def add_control_routes(app: web.Application, behaviour: Behaviour) -> None:
    """Serve ``/_fake/*`` and wire the stop flag and the connection-reset middleware."""

    async def script(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            faults = body.get("faults", [])
            if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
                raise TypeError("faults must be an array of strings")
            behaviour.script(faults)
        except (ValueError, AttributeError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for key in ("delay", "chunk_delay"):
            if isinstance(body.get(key), (int, float)):
                setattr(behaviour, key, float(body[key]))
        return web.json_response({"pending_faults": behaviour.pending_faults})

    async def requests(_: web.Request) -> web.Response:
        return web.json_response({"requests": [r.to_json() for r in behaviour.requests]})

    async def reset(_: web.Request) -> web.Response:
        behaviour.reset()
        return web.json_response({"pending_faults": 0})

    async def on_startup(_: web.Application) -> None:
        behaviour.stopping = False

    async def on_shutdown(_: web.Application) -> None:
        behaviour.stopping = True

    app.router.add_post("/_fake/script", script)
    app.router.add_get("/_fake/requests", requests)
    app.router.add_post("/_fake/reset", reset)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.middlewares.append(_aborted_middleware)

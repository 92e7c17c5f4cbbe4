"""OpenAI and every OpenAI-compatible server (vLLM, TGI, llama.cpp's server, DeepSeek).

The fast path forwards the client's bytes untouched and returns the upstream's bytes
untouched; the body is re-serialized only when the model name must change (aliases) or a
stream must ask for usage.
"""

from __future__ import annotations

import json
import re
from typing import AsyncIterator

from ..config.providers import ProviderConfig
from .base import Call, Reply, UpstreamFailure
from .client import Response, UpstreamClient
from .http import (TRANSPORT_ERRORS, json_object, make_client, malformed, openai_error_to_openai, post, read,
                   transport_failure, usage_from)
from .openai_shapes import TokenUsage
from .sse import DEFAULT_MAX_ITEM_BYTES, SSE_DONE, SSEParser

#: A "usage" key whose value is not null. Once usage is asked for, OpenAI sends
#: ``"usage":null`` in every chunk; only the chunk that carries the object needs parsing
#: (parsing them all was half the cost of re-framing a stream).
_USAGE_VALUE = re.compile(rb'"usage"\s*:(?!\s*null\b)')

_INCLUDE_USAGE = b',"stream_options":{"include_usage":true}}'

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


class OpenAIProvider:
    routes = frozenset(PATHS)

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._client: UpstreamClient | None = None
        self._urls = {route: cfg.url + path for route, path in PATHS.items()}
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key is not None:
            self._headers["Authorization"] = f"Bearer {cfg.api_key.reveal()}"

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.name!r}, {self.cfg.url!r})"

    async def start(self) -> None:
        self._client = make_client(self.cfg)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def url_for(self, route: str) -> str:
        return self._urls[route]

    def request_headers(self) -> dict[str, str]:
        return self._headers

    def _payload(self, call: Call, *, force_usage: bool = False) -> bytes:
        raw = call.raw
        if raw is not None:
            if not force_usage:
                return raw
            if "stream_options" not in call.body:
                # Splice the option in before the closing brace instead of re-serializing
                # (the parsed body has no such key, so the object gains exactly one member).
                end = raw.rstrip()
                if end.endswith(b"}"):
                    return end[:-1] + _INCLUDE_USAGE
        body = dict(call.body)
        body["model"] = call.model
        if force_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    async def _post(self, call: Call, payload: bytes) -> Response:
        assert self._client is not None
        return await post(self._client, self.name, self.url_for(call.route), payload, self.request_headers(),
                          openai_error_to_openai)

    async def complete(self, call: Call) -> Reply:
        body = await read(await self._post(call, self._payload(call)), self.name)
        return Reply(200, body, usage_from(json_object(body, self.name).get("usage")))

    async def open_stream(self, call: Call) -> "OpenAIStream":
        resp = await self._post(call, self._payload(call, force_usage=not call.include_usage))
        return OpenAIStream(self.name, resp, call.include_usage)


def _plain_events(head: bytes) -> bool:
    """``head`` (ending in a blank line, no CR) is only ``data: X\\n\\n`` events with one-line X:
    every newline is in a pair, and every pair but the last starts another ``data: `` line."""
    pairs = head.count(b"\n\n")
    return head.startswith(b"data: ") and head.count(b"\n") == 2 * pairs \
        and head.count(b"\n\ndata: ") == pairs - 1


class OpenAIStream:
    """Re-frames the upstream's SSE events; drops the usage-only chunk the client did not ask for."""

    def __init__(self, provider: str, resp: Response, client_wants_usage: bool) -> None:
        self._provider = provider
        self._resp = resp
        self._wants_usage = client_wants_usage
        self._done = False
        self.usage = TokenUsage()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        pending = b""
        try:
            async for chunk in self._resp.iter_any():
                if pending:
                    chunk, pending = pending + chunk, b""
                out: list[bytes] = []
                if not parser.incomplete and b"\r" not in chunk:
                    # Fast path, what OpenAI-compatible servers send: events of one "data: "
                    # line each, separated by blank lines. Such a run is forwarded as it came;
                    # only the event that carries usage is parsed (and dropped if the client
                    # did not ask for it). Anything else goes through the WHATWG parser.
                    cut = chunk.rfind(b"\n\n")
                    cut = cut + 2 if cut >= 0 else 0
                    head = chunk[:cut]
                    if len(chunk) - cut <= DEFAULT_MAX_ITEM_BYTES and (not head or _plain_events(head)):
                        pending = chunk[cut:]
                        if head:
                            head = self._forward(head)
                            if head:
                                yield head
                        continue
                for event in parser.feed(chunk):
                    self._take(event.data.encode(), out)
                if out:
                    yield b"".join(out)
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(self._provider, exc) from None
        if not self._done:
            raise UpstreamFailure(f"{self._provider}: upstream stream ended early", retryable=True)

    def _forward(self, head: bytes) -> bytes:
        """A run of plain events as it goes to the client: [DONE] noted, usage taken."""
        done = head.find(SSE_DONE)
        if done >= 0 and (done == 0 or head[done - 2:done] == b"\n\n"):
            self._done = True
        found = _USAGE_VALUE.search(head)
        while found is not None:
            start = head.rfind(b"\n\n", 0, found.start())
            start = 0 if start < 0 else start + 2
            end = head.find(b"\n\n", found.end()) + 2
            kept = self._take(head[start + 6:end - 2], [])
            if not kept:
                head = head[:start] + head[end:]
                end = start
            found = _USAGE_VALUE.search(head, end)
        return head

    def _take(self, data: bytes, out: list[bytes]) -> bool:
        """One event's data: note [DONE] and usage, drop the usage-only chunk unless asked for;
        returns whether the event goes to the client (appended to ``out``)."""
        if data == b"[DONE]":
            self._done = True
            out.append(SSE_DONE)
            return True
        if b'"usage"' in data and _USAGE_VALUE.search(data):
            try:
                parsed = json.loads(data)
            except ValueError:
                raise malformed(self._provider, "malformed JSON in a stream event") from None
            if isinstance(parsed, dict) and parsed.get("usage"):
                self.usage = usage_from(parsed["usage"])
                if not self._wants_usage and not parsed.get("choices"):
                    return False
        out.append(b"data: " + data + b"\n\n")
        return True

    async def aclose(self) -> None:
        self._resp.release()  # reuses the connection only if the body was read to its end

"""Anthropic and Ollama streams through their providers, from bytes a loopback server sends:
what the upstream gets wrong ends the stream with a retryable, provider-named failure."""

from __future__ import annotations

import pytest
from aiohttp import web

from securellm_bridge.config.providers import ProviderConfig
from securellm_bridge.providers.base import Call, UpstreamFailure
from securellm_bridge.providers.registry import build
from securellm_bridge.providers.sse import DEFAULT_MAX_ITEM_BYTES
from tests.fakes import running

pytestmark = pytest.mark.anyio

_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
          b'"role":"assistant","model":"claude","content":[],"usage":{"input_tokens":3,"output_tokens":0}}}\n\n')
_TEXT = (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
         b'"content_block":{"type":"text","text":""}}\n\n'
         b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
         b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')
_END = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":1}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


async def _stream(kind: str, path: str, body: bytes) -> list[bytes]:
    """Everything the provider's stream yields for an upstream that answers ``body``."""
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream" if kind == "anthropic"
                                           else "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(path, answer)
    async with running(app) as url:
        provider = build("up", ProviderConfig(kind=kind, base_url=url, models=("m",)))  # type: ignore[arg-type]
        await provider.start()
        try:
            call = Call("req-1", "chat", "m", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                               "stream": True}, None, True, False, 0)
            stream = await provider.open_stream(call)  # type: ignore[attr-defined]
            try:
                return [piece async for piece in stream]
            finally:
                await stream.aclose()
        finally:
            await provider.close()


async def test_a_whole_anthropic_stream_ends_with_done() -> None:
    out = b"".join(await _stream("anthropic", "/v1/messages", _START + _TEXT + _END))
    assert b'"content":"Hi"' in out and out.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("bad, message", [
    (b"event: content_block_delta\ndata: 5\n\n", "up: upstream sent an SSE event data that is not a JSON object"),
    (b'event: content_block_delta\ndata: {"type": \n\n', "up: upstream sent malformed JSON in an SSE event data"),
    (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n',
     "up: upstream stream error (overloaded_error): Overloaded"),
    (b"data: " + b"x" * (DEFAULT_MAX_ITEM_BYTES + 1) + b"\n\n", "up: upstream sent an SSE event longer than"),
])
async def test_what_an_anthropic_upstream_gets_wrong_is_a_retryable_failure(bad: bytes, message: str) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        await _stream("anthropic", "/v1/messages", _START + _TEXT + bad + _END)
    assert caught.value.retryable and caught.value.message.startswith(message)


@pytest.mark.parametrize("bad", [b"5\n", b'{"model": \n', b'{"error":"model crashed"}\n'])
async def test_what_an_ollama_upstream_gets_wrong_is_a_retryable_failure(bad: bytes) -> None:
    first = b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    with pytest.raises(UpstreamFailure) as caught:
        await _stream("ollama", "/api/chat", first + bad)
    assert caught.value.retryable and caught.value.message.startswith("up: ")


async def test_an_anthropic_stream_cut_short_is_a_retryable_failure() -> None:
    with pytest.raises(UpstreamFailure, match="ended before message_stop") as caught:
        await _stream("anthropic", "/v1/messages", _START + _TEXT)
    assert caught.value.retryable

"""OpenAIStream: the byte fast path and the full SSE parser give the same events, however the
upstream's body is split into reads."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, AsyncIterator

import pytest

from securellm_bridge.providers.base import UpstreamFailure
from securellm_bridge.providers.openai import OpenAIStream
from securellm_bridge.providers.sse import SSEParser


class _Body:
    """What OpenAIStream reads: the body in the given pieces (a real Response's interface)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    def release(self) -> None:
        pass


def _chunk(i: int, usage: bool = False) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i} é"}}],
            "usage": None if not usage else {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}


def _body(sep: bytes = b"\n\n", line: bytes = b"data: ", extra: bytes = b"") -> bytes:
    events = [json.dumps(_chunk(i)).encode() for i in range(6)]
    usage_only = json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
    return extra + b"".join(line + e + sep for e in [*events, usage_only, b"[DONE]"])


def _split(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 120)
        out.append(data[i:i + n])
        i += n
    return out


def _run(pieces: list[bytes], wants_usage: bool) -> tuple[list[Any], OpenAIStream]:
    stream = OpenAIStream("p", _Body(pieces), wants_usage)  # type: ignore[arg-type]

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in stream])

    out = asyncio.run(collect())
    events = [e.data for e in SSEParser().feed(out)]
    return [e if e == "[DONE]" else json.loads(e) for e in events], stream


@pytest.mark.parametrize("wants_usage", [True, False])
@pytest.mark.parametrize("body", [_body(), _body(sep=b"\r\n\r\n"), _body(line=b"data:"),
                                  _body(extra=b": keep-alive comment\n\n"), _body(sep=b"\n\n\n"),
                                  _body(extra=b'data: {"choices":[{"index":0,"delta":{}}],"usage" : null}\n\n')],
                         ids=["lf", "crlf", "nospace", "comment", "blank-lines", "spaced-null-usage"])
def test_same_events_whatever_the_framing_and_the_reads(body: bytes, wants_usage: bool) -> None:
    # What the client must get: every event, minus the usage-only one when it did not ask.
    reference = [e.data if e.data == "[DONE]" else json.loads(e.data) for e in SSEParser().feed(body)]
    if not wants_usage:
        reference = [e for e in reference if not (isinstance(e, dict) and e["choices"] == [])]
    assert _run([body], wants_usage)[0] == reference
    for seed in range(25):
        events, stream = _run(_split(body, seed), wants_usage)
        assert events == reference, seed
        assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (5, 7)


def test_usage_on_a_chunk_with_choices_is_kept_and_counted() -> None:
    last = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "x"}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}
    body = b"data: " + json.dumps(_chunk(0)).encode() + b"\n\ndata: " + json.dumps(last).encode() \
        + b"\n\ndata: [DONE]\n\n"
    for seed in range(10):
        events, stream = _run(_split(body, seed), False)
        assert events[1]["usage"]["total_tokens"] == 5 and events[-1] == "[DONE]"
        assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (2, 3)


def test_stream_without_done_is_a_retryable_failure() -> None:
    body = _body()
    with pytest.raises(UpstreamFailure) as info:
        _run([body[:body.index(b"data: [DONE]")]], True)
    assert info.value.retryable


def test_malformed_usage_event_is_an_upstream_failure() -> None:
    with pytest.raises(UpstreamFailure):
        _run([b'data: {"usage": {"prompt_tokens": 1,\n\n', b"data: [DONE]\n\n"], True)

"""The incremental SSE / NDJSON parsers and the SSE encoder."""

from __future__ import annotations

import itertools
import random

import pytest

from securellm_bridge.errors import UpstreamError
from securellm_bridge.providers.sse import (SSE_DONE, NDJSONParser, SSEEvent, SSEParser,
                                            encode_json_sse, encode_sse, json_data)

# An Anthropic-style stream with every construct the parser must handle: a BOM, a comment,
# an event without data (not dispatched), a multi-line data field, CRLF and lone CR line
# endings, a field without a colon, ``id``/``retry`` fields and a non-ASCII character.
STREAM = (
    "\ufeff: keep-alive comment\n"
    "event: message_start\n"
    'data: {"type":"message_start"}\n'
    "\n"
    "event: ignored-without-data\n"
    "\n"
    "id: 7\r\n"
    "retry: 1000\r\n"
    "event: content_block_delta\r\n"
    'data: {"text":"h\u00e9llo \u2603"}\r\n'
    "\r\n"
    "data:first line\r"
    "data:  second line keeps one space\r"
    "\r"
    "data\n"
    "\n"
    "event: message_stop\n"
    'data: {"type":"message_stop"}\n'
    "\n"
).encode()

EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start"}'),
    SSEEvent("content_block_delta", '{"text":"h\u00e9llo \u2603"}'),
    SSEEvent("message", "first line\n second line keeps one space"),
    SSEEvent("message", ""),
    SSEEvent("message_stop", '{"type":"message_stop"}'),
]


def _feed_all(parser: SSEParser | NDJSONParser, chunks: list[bytes]) -> list:
    out: list = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_whole_stream_in_one_chunk() -> None:
    parser = SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert not parser.incomplete


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_every_two_way_split_gives_the_same_events(split: int) -> None:
    assert _feed_all(SSEParser(), [STREAM[:split], STREAM[split:]]) == EXPECTED


def test_byte_by_byte_and_random_splits() -> None:
    assert _feed_all(SSEParser(), [STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        bounds = [0, *cuts, len(STREAM)]
        chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
        assert _feed_all(SSEParser(), chunks) == EXPECTED


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n\r") == [SSEEvent("message", "a")]
    assert parser.feed(b"\n") == []


def test_incomplete_tracks_partial_lines_and_pending_events() -> None:
    parser = SSEParser()
    parser.feed(b"data: {")
    assert parser.incomplete
    parser.feed(b"}\n")
    assert parser.incomplete  # the event is not dispatched until the blank line
    assert parser.feed(b"\n") == [SSEEvent("message", "{}")]
    assert not parser.incomplete


def test_bom_is_only_stripped_at_the_start() -> None:
    events = SSEParser().feed("\ufeffdata: a\n\n\ufeffdata: b\n\n".encode())
    assert events == [SSEEvent("message", "a")]  # "\ufeffdata" is an unknown field name


def test_oversized_event_is_an_upstream_error() -> None:
    parser = SSEParser(max_event_bytes=64)
    parser.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(UpstreamError, match="longer than 64 bytes"):
        parser.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(UpstreamError, match="longer than 64 bytes"):
        SSEParser(max_event_bytes=64).feed(b"data: " + b"x" * 100)


@pytest.mark.parametrize("data,event", [
    ('{"a":1}', None),
    ("line one\nline two\r\nline three\rend", "delta"),
    ("", "ping"),
    ("  leading spaces", None),
])
def test_encoder_round_trips(data: str, event: str | None) -> None:
    encoded = encode_sse(data, event=event)
    assert encoded.endswith(b"\n\n")
    normalized = data.replace("\r\n", "\n").replace("\r", "\n")
    assert SSEParser().feed(encoded) == [SSEEvent(event or "message", normalized)]


def test_encoder_exact_bytes() -> None:
    assert encode_sse("x", event="error") == b"event: error\ndata: x\n\n"
    assert encode_json_sse({"a": [1, "\u00e9"]}) == 'data: {"a":[1,"\u00e9"]}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"
    with pytest.raises(ValueError):
        encode_sse("x", event="bad\nname")


def test_json_data() -> None:
    assert json_data('{"type":"ping"}') == {"type": "ping"}
    with pytest.raises(UpstreamError, match="malformed JSON"):
        json_data('{"type": ')
    with pytest.raises(UpstreamError, match="not a JSON object"):
        json_data("[1, 2]")


NDJSON = (b'{"message":{"content":"h\xc3\xa9"},"done":false}\n'
          b"\n"
          b'{"message":{"content":"llo"},"done":false}\r\n'
          b'{"done":true,"eval_count":2}\n')
NDJSON_EXPECTED = [{"message": {"content": "h\u00e9"}, "done": False},
                   {"message": {"content": "llo"}, "done": False},
                   {"done": True, "eval_count": 2}]


@pytest.mark.parametrize("split", range(1, len(NDJSON)))
def test_ndjson_every_split(split: int) -> None:
    parser = NDJSONParser()
    assert _feed_all(parser, [NDJSON[:split], NDJSON[split:]]) == NDJSON_EXPECTED
    assert not parser.incomplete


def test_ndjson_partial_line_and_errors() -> None:
    parser = NDJSONParser()
    assert parser.feed(b'{"done":') == []
    assert parser.incomplete
    with pytest.raises(UpstreamError, match="malformed JSON"):
        NDJSONParser().feed(b'{"done": tru\n')
    with pytest.raises(UpstreamError, match="not a JSON object"):
        NDJSONParser().feed(b"42\n")
    with pytest.raises(UpstreamError, match="longer than 8 bytes"):
        NDJSONParser(max_line_bytes=8).feed(b'{"a":"0123456789"')

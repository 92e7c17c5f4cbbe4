"""Incremental framing of streamed upstream bodies: Server-Sent Events and NDJSON.

Both parsers accept the body as arbitrary ``bytes`` chunks, exactly as they come off the
socket: a chunk may end in the middle of a line, of a ``\\r\\n`` pair or of a multi-byte
UTF-8 character. Each ``feed`` returns the complete items the chunk finished.

The SSE parser follows the WHATWG "event stream" interpretation rules (comments, ``event``
and ``data`` fields, multi-line data, optional space after the colon, CR / LF / CRLF line
endings, a leading BOM, no dispatch of events without data). ``id`` and ``retry`` are
accepted and ignored: the gateway never reconnects to an upstream stream.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from securellm_bridge.errors import UpstreamError

#: Upper bound for one buffered SSE event or NDJSON line; an upstream that exceeds it is
#: treated as broken instead of being allowed to grow the gateway's memory without limit.
DEFAULT_MAX_ITEM_BYTES = 16 * 1024 * 1024

#: The OpenAI end-of-stream sentinel.
SSE_DONE = b"data: [DONE]\n\n"

_BOM = "\ufeff"
_NEWLINES = re.compile(r"\r\n|\r|\n")


class SSEEvent(NamedTuple):
    """One dispatched event: its type (``message`` when the stream names none) and data."""

    event: str
    data: str


class _LineSplitter:
    """Splits a byte stream into lines on CR, LF or CRLF, across chunk boundaries."""

    def __init__(self, max_line_bytes: int, what: str) -> None:
        self._buf = b""
        self._skip_lf = False
        self._max = max_line_bytes
        self._what = what

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def split(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A trailing CR may be the first half of a CRLF split across chunks.
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > self._max:
            raise UpstreamError(f"upstream sent a {self._what} longer than {self._max} bytes")
        return lines


class SSEParser:
    """Incremental Server-Sent Events parser: ``feed(bytes) -> list[SSEEvent]``."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> None:
        self._lines = _LineSplitter(max_event_bytes, "SSE line")
        self._max = max_event_bytes
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._started = False

    @property
    def incomplete(self) -> bool:
        """True while a partial line or an undispatched event is buffered."""
        return self._lines.pending or bool(self._data) or bool(self._event)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for raw in self._lines.split(chunk):
            line = raw.decode("utf-8", "replace")
            if not self._started:
                self._started = True
                if line.startswith(_BOM):
                    line = line[1:]
            if not line:
                if self._data:
                    out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event = ""
                self._data = []
                self._size = 0
                continue
            if line[0] == ":":
                continue
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._size += len(raw)
                if self._size > self._max:
                    raise UpstreamError(f"upstream sent an SSE event longer than {self._max} bytes")
                self._data.append(value)
            elif name == "event":
                self._event = value
        return out


class NDJSONParser:
    """Incremental newline-delimited JSON parser: ``feed(bytes) -> list[dict]``.

    Blank lines are skipped. A line that is not a JSON object raises :class:`UpstreamError`.
    """

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> None:
        self._lines = _LineSplitter(max_line_bytes, "NDJSON line")

    @property
    def incomplete(self) -> bool:
        """True while a partial line is buffered."""
        return self._lines.pending

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        return [_json_object(line, "NDJSON line") for line in self._lines.split(chunk) if line.strip()]


def json_data(data: str) -> dict[str, Any]:
    """Parse the data of an SSE event that must hold a JSON object."""
    return _json_object(data, "SSE event data")


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise UpstreamError(f"upstream sent malformed JSON in an {what}") from None
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream sent an {what} that is not a JSON object")
    return value


def encode_sse(data: str, *, event: str | None = None) -> bytes:
    """Encode one event; multi-line ``data`` becomes several ``data:`` lines."""
    head = ""
    if event is not None:
        if _NEWLINES.search(event):
            raise ValueError("an SSE event name cannot contain a line break")
        head = f"event: {event}\n"
    body = "".join(f"data: {line}\n" for line in _NEWLINES.split(data))
    return f"{head}{body}\n".encode()


def encode_json_sse(obj: Any, *, event: str | None = None) -> bytes:
    """Encode a JSON value (compact, as OpenAI sends it) as one event."""
    return encode_sse(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), event=event)

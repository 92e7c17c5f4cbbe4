"""The Provider interface and what one attempt against an upstream carries and returns.

A provider turns one OpenAI-shaped request into one upstream HTTP call. It answers either a
complete :class:`Reply` or an :class:`UpstreamStream` of OpenAI ``chat.completion.chunk`` SSE
bytes. Failures are :class:`UpstreamFailure`; ``retryable`` tells the router whether another
attempt (same or next provider) may succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Literal, Protocol

from ..config.providers import ProviderConfig
from ..errors import BridgeError, Kind
from .openai_shapes import TokenUsage

Route = Literal["chat", "completions", "embeddings"]


class UpstreamFailure(BridgeError):
    """An upstream attempt failed. ``status`` is what the client gets if no fallback succeeds."""

    kind = Kind.UPSTREAM
    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool, status: int = 502, retry_after: float | None = None,
                 body: bytes | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retryable = retryable
        self.status = status
        #: An OpenAI-shaped error body to pass to the client as is (non-retryable 4xx).
        self.body = body


@dataclass(slots=True)
class Call:
    """One request as the router hands it to a provider."""

    request_id: str
    route: Route
    #: The model name the upstream knows.
    model: str
    #: The parsed OpenAI request body (already redacted by DLP when that is on).
    body: dict
    #: The client's original bytes when ``body`` is untouched and ``model`` is the client's:
    #: OpenAI-compatible upstreams then get them forwarded without re-serializing.
    raw: bytes | None
    stream: bool
    include_usage: bool
    created: int


@dataclass(slots=True)
class Reply:
    """A complete (non-streamed) answer, already in OpenAI's shape."""

    status: int
    body: bytes
    usage: TokenUsage


class UpstreamStream(Protocol):
    """An open upstream stream. Iterating yields OpenAI SSE bytes, ending with ``data: [DONE]``."""

    usage: TokenUsage

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    cfg: ProviderConfig
    #: The routes this provider can serve; the router skips it for the others.
    routes: frozenset[str]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(self, call: Call) -> Reply: ...

    async def open_stream(self, call: Call) -> UpstreamStream: ...

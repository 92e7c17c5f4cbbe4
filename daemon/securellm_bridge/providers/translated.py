"""An upstream stream in another wire format (Anthropic SSE, Ollama NDJSON) as OpenAI SSE.

The provider supplies the step that turns one body chunk, as it came off the socket, into the
``chat.completion.chunk`` objects it completes: it parses the framing, feeds its translator and
raises :class:`UpstreamFailure` for what the upstream got wrong. :class:`TranslatedStream` does
the rest: encoding, usage, ``data: [DONE]``, transport errors and an upstream that stops early.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterator, Protocol

from ..errors import UpstreamError
from .base import UpstreamFailure
from .client import Response
from .http import TRANSPORT_ERRORS, transport_failure
from .openai_shapes import TokenUsage
from .sse import SSE_DONE, encode_json_sse

#: One body chunk → the OpenAI chunk objects it completes. A generator, so that each object is
#: encoded as soon as it is made, before the translator is fed the next item.
Translate = Callable[[bytes], Iterator[dict[str, Any]]]


class StreamTranslator(Protocol):
    """What the stream reads off the provider's translator after each chunk."""

    @property
    def usage(self) -> TokenUsage: ...

    @property
    def finished(self) -> bool: ...


def stream_failure(provider: str, exc: UpstreamError) -> UpstreamFailure:
    """An error the upstream reported in its stream, or broken framing: retryable."""
    return UpstreamFailure(f"{provider}: {exc.message}", retryable=True)


class TranslatedStream:
    """Yields the OpenAI SSE bytes of each upstream chunk; ``last_event`` names the upstream's
    end of stream, for the failure raised when the body ends without it."""

    def __init__(self, provider: str, resp: Response, translator: StreamTranslator, translate: Translate,
                 last_event: str) -> None:
        self._provider = provider
        self._resp = resp
        self._tr = translator
        self._translate = translate
        self._last_event = last_event
        self.usage = TokenUsage()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.iter_any():
                out = [encode_json_sse(c) for c in self._translate(chunk)]
                self.usage = self._tr.usage
                if self._tr.finished:
                    out.append(SSE_DONE)
                if out:
                    yield b"".join(out)
                if self._tr.finished:
                    return
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(self._provider, exc) from None
        raise UpstreamFailure(f"{self._provider}: upstream stream ended before {self._last_event}", retryable=True)

    async def aclose(self) -> None:
        self._resp.release()  # reuses the connection only if the body was read to its end

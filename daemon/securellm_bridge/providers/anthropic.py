"""Anthropic's Messages API behind the OpenAI chat completions API (chat only)."""

from __future__ import annotations

import json
from typing import AsyncIterator

from ..config.providers import ProviderConfig
from ..errors import UpstreamError
from .anthropic_translate import (AnthropicStreamTranslator, anthropic_error_to_openai, anthropic_to_chat,
                                  chat_to_anthropic)
from .base import Call, Reply, UpstreamFailure
from .client import Response, UpstreamClient
from .http import TRANSPORT_ERRORS, json_object, make_client, malformed, post, read, transport_failure, usage_from
from .openai_shapes import TokenUsage
from .sse import SSE_DONE, SSEParser, encode_json_sse

API_VERSION = "2023-06-01"


class AnthropicProvider:
    routes = frozenset({"chat"})

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._client: UpstreamClient | None = None
        self._url = cfg.url + "/v1/messages"
        self._headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if cfg.api_key is not None:
            self._headers["x-api-key"] = cfg.api_key.reveal()

    def __repr__(self) -> str:
        return f"AnthropicProvider({self.name!r}, {self.cfg.url!r})"

    async def start(self) -> None:
        self._client = make_client(self.cfg)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _post(self, call: Call, stream: bool) -> Response:
        assert self._client is not None
        body = chat_to_anthropic({**call.body, "model": call.model, "stream": stream},
                                 default_max_tokens=self.cfg.default_max_tokens)
        return await post(self._client, self.name, self._url, json.dumps(body).encode(), self._headers,
                          anthropic_error_to_openai)

    async def complete(self, call: Call) -> Reply:
        parsed = json_object(await read(await self._post(call, stream=False), self.name), self.name)
        try:
            out = anthropic_to_chat(parsed, model=call.body.get("model", call.model), created=call.created,
                                    request_id=call.request_id)
        except (AttributeError, UpstreamError):
            raise malformed(self.name, "a malformed Messages response") from None
        return Reply(200, json.dumps(out).encode(), usage_from(out["usage"]))

    async def open_stream(self, call: Call) -> "AnthropicStream":
        resp = await self._post(call, stream=True)
        translator = AnthropicStreamTranslator(call.body.get("model", call.model), call.created, call.request_id,
                                               call.include_usage)
        return AnthropicStream(self.name, resp, translator)


class AnthropicStream:
    def __init__(self, provider: str, resp: Response, translator: AnthropicStreamTranslator) -> None:
        self._provider = provider
        self._resp = resp
        self._tr = translator
        self.usage = TokenUsage()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        try:
            async for chunk in self._resp.iter_any():
                out = []
                for event in parser.feed(chunk):
                    try:
                        chunks = self._tr.feed(event.event, json.loads(event.data))
                    except ValueError:
                        raise malformed(self._provider, "malformed JSON in a stream event") from None
                    except UpstreamError as exc:  # an `event: error` from the upstream
                        raise UpstreamFailure(f"{self._provider}: {exc.message}", retryable=True) from None
                    out.extend(encode_json_sse(c) for c in chunks)
                self.usage = self._tr.usage
                if self._tr.finished:
                    out.append(SSE_DONE)
                if out:
                    yield b"".join(out)
                if self._tr.finished:
                    return
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(self._provider, exc) from None
        raise UpstreamFailure(f"{self._provider}: upstream stream ended before message_stop", retryable=True)

    async def aclose(self) -> None:
        self._resp.release()  # reuses the connection only if the body was read to its end

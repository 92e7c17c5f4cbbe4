"""Anthropic's Messages API behind the OpenAI chat completions API (chat only)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from ..config.providers import ProviderConfig
from ..errors import UpstreamError
from .anthropic_translate import (AnthropicStreamTranslator, anthropic_error_to_openai, anthropic_to_chat,
                                  chat_to_anthropic)
from .base import Call, Reply
from .client import Response, UpstreamClient
from .http import json_object, make_client, malformed, post, read, usage_from
from .sse import SSEParser, json_data
from .translated import Translate, TranslatedStream, stream_failure

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

    async def open_stream(self, call: Call) -> TranslatedStream:
        resp = await self._post(call, stream=True)
        translator = AnthropicStreamTranslator(call.body.get("model", call.model), call.created, call.request_id,
                                               call.include_usage)
        return TranslatedStream(self.name, resp, translator, _translate_sse(self.name, translator), "message_stop")


def _translate_sse(provider: str, translator: AnthropicStreamTranslator) -> Translate:
    """Anthropic's SSE events, each fed to the translator as it is parsed."""
    parser = SSEParser()

    def translate(chunk: bytes) -> Iterator[dict[str, Any]]:
        # Each UpstreamError (an over-long event, data that is not a JSON object, an
        # `event: error` from the upstream) ends the stream with a retryable failure.
        try:
            for event in parser.feed(chunk):
                yield from translator.feed(event.event, json_data(event.data))
        except UpstreamError as exc:
            raise stream_failure(provider, exc) from None

    return translate

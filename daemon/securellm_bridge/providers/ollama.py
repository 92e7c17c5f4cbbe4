"""Ollama's native ``/api/chat`` (NDJSON stream) and ``/api/embed`` behind the OpenAI API."""

from __future__ import annotations

import json
from typing import Any, Iterator

from ..config.providers import ProviderConfig
from ..errors import UpstreamError
from .base import Call, Reply
from .client import Response, UpstreamClient
from .http import json_object, make_client, malformed, post, read, usage_from
from .ollama_translate import (OllamaStreamTranslator, chat_to_ollama, embeddings_to_ollama, ollama_error_to_openai,
                               ollama_to_chat, ollama_to_embeddings)
from .sse import NDJSONParser
from .translated import Translate, TranslatedStream, stream_failure


class OllamaProvider:
    routes = frozenset({"chat", "embeddings"})

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._client: UpstreamClient | None = None
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key is not None:  # Ollama behind an authenticating reverse proxy
            self._headers["Authorization"] = f"Bearer {cfg.api_key.reveal()}"

    def __repr__(self) -> str:
        return f"OllamaProvider({self.name!r}, {self.cfg.url!r})"

    async def start(self) -> None:
        self._client = make_client(self.cfg)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _post(self, path: str, body: dict) -> Response:
        assert self._client is not None
        return await post(self._client, self.name, self.cfg.url + path, json.dumps(body).encode(), self._headers,
                          ollama_error_to_openai)

    async def _read_json(self, resp: Response) -> dict:
        return json_object(await read(resp, self.name), self.name)

    async def complete(self, call: Call) -> Reply:
        client_model = call.body.get("model", call.model)
        try:
            if call.route == "embeddings":
                parsed = await self._read_json(await self._post("/api/embed", embeddings_to_ollama(
                    {**call.body, "model": call.model})))
                out = ollama_to_embeddings(parsed, client_model,
                                           encoding_format=call.body.get("encoding_format") or "float")
            else:
                parsed = await self._read_json(await self._post("/api/chat", chat_to_ollama(
                    {**call.body, "model": call.model, "stream": False})))
                out = ollama_to_chat(parsed, model=client_model, created=call.created, request_id=call.request_id)
        except UpstreamError as exc:
            raise malformed(self.name, exc.message) from None
        return Reply(200, json.dumps(out).encode(), usage_from(out["usage"]))

    async def open_stream(self, call: Call) -> TranslatedStream:
        resp = await self._post("/api/chat", chat_to_ollama({**call.body, "model": call.model, "stream": True}))
        tr = OllamaStreamTranslator(call.body.get("model", call.model), call.created, call.request_id,
                                    call.include_usage)
        return TranslatedStream(self.name, resp, tr, _translate_ndjson(self.name, tr), "done")


def _translate_ndjson(provider: str, translator: OllamaStreamTranslator) -> Translate:
    """Ollama's NDJSON objects, each fed to the translator in turn."""
    parser = NDJSONParser()

    def translate(chunk: bytes) -> Iterator[dict[str, Any]]:
        try:
            for obj in parser.feed(chunk):
                yield from translator.feed(obj)
        except UpstreamError as exc:
            raise stream_failure(provider, exc) from None

    return translate

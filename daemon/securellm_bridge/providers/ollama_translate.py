"""OpenAI chat completions / embeddings <-> Ollama's native API, as pure functions over dicts.

Chat: :func:`chat_to_ollama` builds an ``/api/chat`` request; :func:`ollama_to_chat` and
:class:`OllamaStreamTranslator` (one NDJSON object at a time, framed by
:class:`~securellm_bridge.providers.sse.NDJSONParser`) build the OpenAI answers.
Embeddings: :func:`embeddings_to_ollama` / :func:`ollama_to_embeddings` for ``/api/embed``.
Errors: :func:`ollama_error_to_openai`. Nothing here performs I/O.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from securellm_bridge.errors import UpstreamError
from securellm_bridge.providers.openai_shapes import (
    ChunkBuilder, TokenUsage, chat_completion, content_texts, count, data_url, error_body,
    function_tools, image_url, invalid, max_tokens, message_tool_calls, number, part_text,
    reject_unsupported, required_messages, required_model, stop_sequences, stream_flag, tool_call,
    tool_call_id)

#: OpenAI parameters Ollama cannot honour; rejected unless neutral (null, 0, false).
_UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "functions", "function_call", "audio",
                "prediction", "reasoning_effort", "web_search_options")
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"})
_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
_MAX_MESSAGE = 1000


# --------------------------------------------------------------------------------- chat


def chat_to_ollama(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI chat completions request into an ``/api/chat`` request.

    ``stream`` is always explicit: Ollama streams by default, OpenAI does not.
    """
    reject_unsupported(body, _UNSUPPORTED)
    out: dict[str, Any] = {"model": required_model(body),
                           "messages": _convert_messages(required_messages(body)),
                           "stream": stream_flag(body)}
    options = _options(body)
    if options:
        out["options"] = options
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    tools = function_tools(body)
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise invalid("tool_choice", 'only "auto" and "none" are supported by this model')
    if tools and choice != "none":
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            "parameters": t.parameters or {"type": "object", "properties": {}}}} for t in tools]
    return out


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2),
                           ("frequency_penalty", -2, 2)):
        if (value := number(body, key, low, high)) is not None:
            options[key] = value
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise invalid("seed", "must be an integer")
        options["seed"] = seed
    if stop := stop_sequences(body):
        options["stop"] = stop
    if (limit := max_tokens(body)) is not None:
        options["num_predict"] = limit
    return options


def _format(response_format: Any) -> Any:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    schema = response_format.get("json_schema") if kind == "json_schema" else None
    if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
        return schema["schema"]
    raise invalid("response_format", 'must be of type "text", "json_object" or "json_schema" '
                                     "with a schema")


def _convert_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        where, role = f"messages[{i}]", msg.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": "\n".join(content_texts(msg.get("content"), where))})
        elif role == "user":
            out.append(_user_message(msg.get("content"), where))
        elif role == "assistant":
            converted: dict[str, Any] = {"role": "assistant", "content": "\n".join(
                content_texts(msg.get("content"), where, ("refusal",)))}
            calls = message_tool_calls(msg, where)
            if calls:
                converted["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                           for c in calls]
                tool_names.update((c.id, c.name) for c in calls)
            out.append(converted)
        elif role == "tool":
            call_id = tool_call_id(msg, where)
            converted = {"role": "tool", "content": "\n".join(content_texts(msg.get("content"), where))}
            if call_id in tool_names:
                converted["tool_name"] = tool_names[call_id]
            out.append(converted)
        else:
            raise invalid(f"{where}.role", "unsupported role")
    return out


def _user_message(content: Any, where: str) -> dict[str, Any]:
    if not isinstance(content, list):
        return {"role": "user", "content": "\n".join(content_texts(content, where))}
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, dict) and part.get("type") == "image_url":
            images.append(data_url(image_url(part, at), f"{at}.image_url.url", _IMAGE_TYPES)[1])
        elif text := part_text(part, at):
            texts.append(text)
    message: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
    if images:
        message["images"] = images
    return message


def _finish(resp: dict[str, Any], has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    reason = resp.get("done_reason")
    return _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"


def _usage(resp: dict[str, Any]) -> TokenUsage:
    return TokenUsage(count(resp, "prompt_eval_count"), count(resp, "eval_count"))


def _tool_calls(message: dict[str, Any], request_id: str, first: int) -> list[dict[str, Any]]:
    """OpenAI tool calls of an Ollama message; ids are made up where Ollama gives none."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UpstreamError("upstream sent tool_calls that are not an array")
    out = []
    for n, call in enumerate(calls, start=first):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise UpstreamError("upstream sent a tool call without a function name")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        out.append(tool_call(call_id or f"call_{request_id}_{n}", fn["name"], fn.get("arguments", {})))
    return out


def _message(resp: dict[str, Any]) -> dict[str, Any]:
    if isinstance(resp.get("error"), str):
        raise UpstreamError(f"upstream error: {resp['error'][:_MAX_MESSAGE]}")
    message = resp.get("message", {})
    if not isinstance(message, dict):
        raise UpstreamError("upstream response has no message object")
    return message


def ollama_to_chat(resp: dict[str, Any], *, model: str, created: int,
                   request_id: str) -> dict[str, Any]:
    """Translate a non-streamed ``/api/chat`` response into a ``chat.completion``."""
    message = _message(resp)
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    calls = _tool_calls(message, request_id, 0)
    return chat_completion(request_id=request_id, model=model, created=created,
                           content=content or (None if calls else ""), tool_calls=calls,
                           finish_reason=_finish(resp, bool(calls)), usage=_usage(resp))


class OllamaStreamTranslator:
    """Turns the NDJSON objects of one ``/api/chat`` stream into ``chat.completion.chunk`` dicts."""

    def __init__(self, model: str, created: int, request_id: str, include_usage: bool = False) -> None:
        self._chunks = ChunkBuilder(model, created, request_id, include_usage)
        self._request_id = request_id
        self._usage = TokenUsage()
        self._tool_calls = 0
        self._started = False
        self._finished = False

    @property
    def usage(self) -> TokenUsage:
        """Tokens reported so far (Ollama reports them on the final ``done`` object)."""
        return self._usage

    @property
    def finished(self) -> bool:
        """True once the ``done`` object was seen; a stream that ends before it was cut short."""
        return self._finished

    def feed(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunks for one object; raises :class:`UpstreamError` for an ``{"error": ...}`` line."""
        message = _message(obj)
        if self._finished:
            return []
        out = []
        if not self._started:
            self._started = True
            out.append(self._chunks.chunk({"role": "assistant", "content": ""}))
        content = message.get("content")
        if isinstance(content, str) and content:
            out.append(self._chunks.chunk({"content": content}))
        calls = _tool_calls(message, self._request_id, self._tool_calls)
        if calls:
            indexed = [{"index": self._tool_calls + n, **call} for n, call in enumerate(calls)]
            self._tool_calls += len(calls)
            out.append(self._chunks.chunk({"tool_calls": indexed}))
        if obj.get("done") is True:
            self._finished = True
            self._usage = _usage(obj)
            out.append(self._chunks.chunk({}, _finish(obj, self._tool_calls > 0)))
            out += self._chunks.end(self._usage)
        return out


# --------------------------------------------------------------------------- embeddings


def embeddings_to_ollama(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an OpenAI embeddings request into an ``/api/embed`` request."""
    out: dict[str, Any] = {"model": required_model(body)}
    text = body.get("input")
    if isinstance(text, str) or (isinstance(text, list) and text and all(isinstance(t, str) for t in text)):
        out["input"] = text
    else:
        raise invalid("input", "must be a string or a non-empty array of strings "
                               "(token arrays are not supported by this model)")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid("encoding_format", 'must be "float" or "base64"')
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise invalid("dimensions", "must be a positive integer")
        out["dimensions"] = dimensions
    return out


def ollama_to_embeddings(resp: dict[str, Any], model: str, *,
                         encoding_format: str = "float") -> dict[str, Any]:
    """Translate an ``/api/embed`` response; ``base64`` packs little-endian float32 as OpenAI does."""
    vectors = resp.get("embeddings")
    if not isinstance(vectors, list) or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in vectors):
        raise UpstreamError("upstream embeddings response has no embeddings array")
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = count(resp, "prompt_eval_count")
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ------------------------------------------------------------------------------- errors


def ollama_error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """Map an Ollama error response (``{"error": "..."}`` or garbage) to an OpenAI error."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    detail = parsed.get("error") if isinstance(parsed, dict) else None
    message = f"upstream: {detail[:_MAX_MESSAGE]}" if isinstance(detail, str) and detail else (
        f"upstream returned HTTP {status}")
    if status == 404:
        return 404, error_body(message, "invalid_request_error", "model_not_found")
    if status == 400:
        return 400, error_body(message, "invalid_request_error", "invalid_request")
    if status == 429:
        return 429, error_body(message, "rate_limit_error", "rate_limit_exceeded")
    if status == 503:
        return 503, error_body(message, "upstream_error", "upstream_overloaded")
    if status in (401, 403):
        return 502, error_body("the upstream rejected the gateway's credentials", "upstream_error",
                               "upstream_auth_failed")
    return 502, error_body(message, "upstream_error", "upstream_error")

"""OpenAI chat completions <-> Anthropic Messages API, as pure functions over dicts.

Requests: :func:`chat_to_anthropic`. Responses: :func:`anthropic_to_chat` (non-streamed),
:class:`AnthropicStreamTranslator` (SSE events to ``chat.completion.chunk`` objects) and
:func:`anthropic_error_to_openai` (error bodies). Nothing here performs I/O.
"""

from __future__ import annotations

import json
from typing import Any

from securellm_bridge.errors import UpstreamError
from securellm_bridge.providers.openai_shapes import (
    ChunkBuilder, TokenUsage, chat_completion, content_texts, count, data_url, error_body,
    function_tools, image_url, invalid, max_tokens, message_tool_calls, number, part_text,
    reject_unsupported, required_messages, required_model, stop_sequences, stream_flag, tool_call,
    tool_call_id)

#: OpenAI parameters the Messages API cannot honour; rejected unless neutral (null, 0, false).
_UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
                "seed", "functions", "function_call", "audio", "prediction", "reasoning_effort",
                "web_search_options")
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
           "model_context_window_exceeded": "length", "tool_use": "tool_calls",
           "refusal": "content_filter"}
_MAX_MESSAGE = 1000


# --------------------------------------------------------------------------- requests


def chat_to_anthropic(body: dict[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """Translate an OpenAI chat completions request into a Messages API request."""
    reject_unsupported(body, _UNSUPPORTED)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise invalid("response_format", "only text output is supported by this model")
    out: dict[str, Any] = {"model": required_model(body)}
    system, out["messages"] = _convert_messages(required_messages(body))
    out["max_tokens"] = max_tokens(body) or default_max_tokens
    if system:
        out["system"] = system
    if stop := stop_sequences(body):
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p"):
        if (value := number(body, key, 0, 1)) is not None:
            out[key] = value
    if stream_flag(body):
        out["stream"] = True
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise invalid("user", "must be a string")
        out["metadata"] = {"user_id": user}
    _convert_tools(body, out)
    return out


def _convert_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where, role = f"messages[{i}]", msg.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content_texts(msg.get("content"), where)))
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), where)
        elif role == "assistant":
            blocks = _text_blocks(content_texts(msg.get("content"), where, ("refusal",)))
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                       for c in message_tool_calls(msg, where)]
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg, where)]
        else:
            raise invalid(f"{where}.role", "unsupported role")
        if not blocks:
            raise invalid(f"{where}.content", "the message has no content")
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise invalid("messages", "at least one user or assistant message is required")
    for msg in out:
        # The Messages API wants tool results first in a user turn, before any other content.
        if msg["role"] == "user":
            msg["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, out


def _text_blocks(texts: list[str]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": t} for t in texts]


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content_texts(content, where))
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, dict) and part.get("type") == "image_url":
            blocks.append(_image_block(image_url(part, at), f"{at}.image_url.url"))
        elif text := part_text(part, at):
            blocks.append({"type": "text", "text": text})
    return blocks


def _image_block(url: str, where: str) -> dict[str, Any]:
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = data_url(url, where, _IMAGE_TYPES)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id(msg, where)}
    content = msg.get("content")
    texts = content_texts(content, where)
    if isinstance(content, list):
        block["content"] = _text_blocks(texts)
    elif texts:
        block["content"] = texts[0]
    return block


def _convert_tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = function_tools(body)
    if not tools:
        return
    out["tools"] = [{"name": t.name, **({"description": t.description} if t.description else {}),
                     "input_schema": t.parameters or {"type": "object", "properties": {}}}
                    for t in tools]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    if choice != {"type": "auto"}:
        out["tool_choice"] = choice


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and choice.get("type") == "function" and isinstance(fn.get("name"), str):
        return {"type": "tool", "name": fn["name"]}
    raise invalid("tool_choice", 'must be "none", "auto", "required" or a named function')


# -------------------------------------------------------------------------- responses


def finish_reason(stop_reason: Any) -> str:
    """OpenAI ``finish_reason`` for an Anthropic ``stop_reason``."""
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def anthropic_to_chat(resp: dict[str, Any], *, model: str, created: int,
                      request_id: str) -> dict[str, Any]:
    """Translate a non-streamed Messages API response into a ``chat.completion``."""
    content = resp.get("content")
    if not isinstance(content, list):
        raise UpstreamError("upstream response has no content array")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(_tool_call(block, block.get("input", {})))
    return chat_completion(request_id=request_id, model=model, created=created,
                           content="".join(texts) if texts or not calls else None, tool_calls=calls,
                           finish_reason=finish_reason(resp.get("stop_reason")),
                           usage=_usage(resp.get("usage")))


def _tool_call(block: dict[str, Any], arguments: Any) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise UpstreamError("upstream sent a tool_use block without id or name")
    return tool_call(call_id, name, arguments)


def _usage(raw: Any) -> TokenUsage:
    usage = raw if isinstance(raw, dict) else {}
    cached = count(usage, "cache_read_input_tokens")
    prompt = count(usage, "input_tokens") + count(usage, "cache_creation_input_tokens") + cached
    return TokenUsage(prompt, count(usage, "output_tokens"), cached)


class AnthropicStreamTranslator:
    """Turns the events of one Messages API stream into ``chat.completion.chunk`` dicts."""

    def __init__(self, model: str, created: int, request_id: str, include_usage: bool = False) -> None:
        self._chunks = ChunkBuilder(model, created, request_id, include_usage)
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[Any, int] = {}
        self._started = False
        self._finish: str | None = None
        self._finished = False

    @property
    def usage(self) -> TokenUsage:
        """Tokens reported so far (input at ``message_start``, output at ``message_delta``)."""
        return _usage(self._usage)

    @property
    def finished(self) -> bool:
        """True once ``message_stop`` was seen; a stream that ends before it was cut short."""
        return self._finished

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunks for one SSE event; raises :class:`UpstreamError` for an ``error`` event."""
        if event == "error":
            raise _stream_error(data)
        if self._finished or event == "ping":
            return []
        if event == "message_start":
            if self._started:
                return []
            self._started = True
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
            return [self._chunks.chunk({"role": "assistant", "content": ""})]
        if not self._started and event in ("content_block_start", "content_block_delta",
                                           "message_delta", "message_stop"):
            raise UpstreamError(f"upstream stream sent {event} before message_start")
        if event == "content_block_start":
            return self._block_start(data)
        if event == "content_block_delta":
            return self._block_delta(data)
        if event == "message_delta":
            if isinstance(data.get("usage"), dict):
                self._usage.update(data["usage"])
            delta = data.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop is None:
                return []
            self._finish = finish_reason(stop)
            return [self._chunks.chunk({}, self._finish)]
        if event == "message_stop":
            self._finished = True
            out = [] if self._finish is not None else [self._chunks.chunk({}, "stop")]
            return out + self._chunks.end(self.usage)
        return []

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        text = block.get("text")
        if block.get("type") == "text" and isinstance(text, str) and text:
            return [self._chunks.chunk({"content": text})]
        if block.get("type") != "tool_use":
            return []
        index = self._tool_index[data.get("index")] = len(self._tool_index)
        return [self._chunks.chunk({"tool_calls": [{"index": index, **_tool_call(block, "")}]})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        text, kind = delta.get("text"), delta.get("type")
        if kind == "text_delta" and isinstance(text, str) and text:
            return [self._chunks.chunk({"content": text})]
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return []
        index = self._tool_index.get(data.get("index"))
        if index is None:
            raise UpstreamError("upstream stream sent tool input for a block that is not a tool_use")
        arguments = {"arguments": str(delta["partial_json"])}
        return [self._chunks.chunk({"tool_calls": [{"index": index, "function": arguments}]})]


def _stream_error(data: dict[str, Any]) -> UpstreamError:
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    kind, message = error.get("type"), error.get("message")
    kind = kind if isinstance(kind, str) else "api_error"
    message = message if isinstance(message, str) else ""
    return UpstreamError(f"upstream stream error ({kind}): {message[:_MAX_MESSAGE]}", code=kind)


# ----------------------------------------------------------------------------- errors

#: Anthropic error type -> (client status, OpenAI error type, code, forward upstream message).
#: Credential problems are the gateway's, not the client's: they become 502.
_ERRORS: dict[str, tuple[int, str, str, bool]] = {
    "invalid_request_error": (400, "invalid_request_error", "invalid_request", True),
    "authentication_error": (502, "upstream_error", "upstream_auth_failed", False),
    "permission_error": (502, "upstream_error", "upstream_permission_denied", True),
    "billing_error": (502, "upstream_error", "upstream_billing_error", True),
    "not_found_error": (404, "invalid_request_error", "not_found", True),
    "request_too_large": (413, "invalid_request_error", "payload_too_large", True),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded", True),
    "api_error": (502, "upstream_error", "upstream_error", True),
    "overloaded_error": (503, "upstream_error", "upstream_overloaded", True),
    "timeout_error": (504, "upstream_error", "timeout", True),
}
_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
                   529: "overloaded_error"}


def anthropic_error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """Map an upstream error response (any body, even garbage) to an OpenAI error."""
    kind, message = None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") if error.get("type") in _ERRORS else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
    kind = kind or _TYPE_BY_STATUS.get(status, "api_error")
    client_status, err_type, code, forward = _ERRORS[kind]
    if kind == "authentication_error":
        text = "the upstream provider rejected the gateway's credentials"
    elif forward and message:
        text = f"upstream: {message[:_MAX_MESSAGE]}"
    else:
        text = f"upstream returned HTTP {status}"
    return client_status, error_body(text, err_type, code)

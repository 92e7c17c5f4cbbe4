"""The OpenAI side of every translation: reading requests and building responses.

Readers validate one part of an OpenAI chat / embeddings request and raise
:class:`InvalidRequest` naming the offending parameter (``messages[2].content[0].type``).
Builders decide the exact shape of ``chat.completion``, ``chat.completion.chunk``, tool
calls, usage and error bodies, so that every upstream answers clients identically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from securellm_bridge.errors import InvalidRequest

_DATA_URL = re.compile(r"data:([\w.+/-]+);base64,(.*)", re.DOTALL)
_NEUTRAL: tuple[Any, ...] = (None, False, 0, {}, [])


# --------------------------------------------------------------------------- requests


def invalid(param: str, problem: str) -> InvalidRequest:
    """An :class:`InvalidRequest` whose message starts with the parameter it is about."""
    return InvalidRequest(f"{param}: {problem}", param=param)


def reject_unsupported(body: dict[str, Any], params: Iterable[str]) -> None:
    """Reject ``n`` > 1, non-text ``modalities`` and each of ``params`` unless neutral."""
    if body.get("n") not in (None, 1):
        raise invalid("n", "only one choice (n=1) is supported by this model")
    if body.get("modalities") not in (None, ["text"]):
        raise invalid("modalities", "only text output is supported by this model")
    for param in params:
        if body.get(param) not in _NEUTRAL:
            raise invalid(param, "is not supported by this model")


def required_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "must be a non-empty string")
    return model


def required_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "must be a non-empty array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise invalid(f"messages[{i}]", "must be an object")
    return messages


def max_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens``, else the legacy ``max_tokens``, else None."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(key, "must be a positive integer")
        return value
    return None


def number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(key, f"must be a number between {low:g} and {high:g} for this model")
    return value


def stop_sequences(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise invalid("stop", "must be a string or an array of strings")


def stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise invalid("stream", "must be a boolean")
    return bool(stream)


def include_usage(body: dict[str, Any]) -> bool:
    """Whether a streamed response must end with a usage chunk (``stream_options``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def part_text(part: Any, where: str, extra_text_types: tuple[str, ...] = ()) -> str:
    """The text of a ``text`` content part (or of one of ``extra_text_types``)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind != "text" and kind not in extra_text_types:
        raise invalid(f"{where}.type", "unsupported content part type")
    text = part.get(kind)
    if not isinstance(text, str):
        raise invalid(f"{where}.{kind}", "must be a string")
    return text


def content_texts(content: Any, where: str, extra_text_types: tuple[str, ...] = ()) -> list[str]:
    """The non-empty texts of a text-only content: a string or an array of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise invalid(f"{where}.content", "must be a string or an array")
    texts = (part_text(part, f"{where}.content[{j}]", extra_text_types)
             for j, part in enumerate(content))
    return [t for t in texts if t]


def image_url(part: dict[str, Any], where: str) -> str:
    """The URL of an ``image_url`` content part."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise invalid(f"{where}.image_url.url", "must be a string")
    return url


def data_url(url: str, where: str, media_types: frozenset[str]) -> tuple[str, str]:
    """``(media_type, base64 payload)`` of a ``data:<type>;base64,<payload>`` URL."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise invalid(where, "must be a base64 data: URL")
    media_type = match.group(1).lower()
    if media_type not in media_types:
        raise invalid(where, f"image type must be one of {', '.join(sorted(media_types))}")
    return media_type, match.group(2)


@dataclass(frozen=True, slots=True)
class ToolCallIn:
    """A tool call of an assistant message in the request history."""

    id: str
    name: str
    arguments: dict[str, Any]


def message_tool_calls(msg: dict[str, Any], where: str) -> list[ToolCallIn]:
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise invalid(f"{where}.tool_calls", "must be an array")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise invalid(at, "must be a function call")
        call_id, name, arguments = call.get("id"), fn.get("name"), fn.get("arguments") or "{}"
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{at}.id", "must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise invalid(f"{at}.function.name", "must be a non-empty string")
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise invalid(f"{at}.function.arguments", "must be a JSON object encoded as a string")
        out.append(ToolCallIn(call_id, name, args))
    return out


def tool_call_id(msg: dict[str, Any], where: str) -> str:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.tool_call_id", "must be a non-empty string")
    return call_id


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the client offers the model."""

    name: str
    description: str | None
    parameters: dict[str, Any] | None


def function_tools(body: dict[str, Any]) -> list[FunctionTool]:
    """The ``tools`` of a request; ``tool_choice`` without tools is rejected, like OpenAI does."""
    tools = body.get("tools")
    if tools is None:
        if body.get("tool_choice") is not None:
            raise invalid("tool_choice", "is only allowed when tools are specified")
        return []
    if not isinstance(tools, list):
        raise invalid("tools", "must be an array")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise invalid(f"tools[{i}]", "only function tools are supported")
        name, params, description = fn.get("name"), fn.get("parameters"), fn.get("description")
        if not isinstance(name, str) or not name:
            raise invalid(f"tools[{i}].function.name", "must be a non-empty string")
        if params is not None and not isinstance(params, dict):
            raise invalid(f"tools[{i}].function.parameters", "must be an object")
        out.append(FunctionTool(name, description if isinstance(description, str) else None, params))
    return out


# -------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one completion, as reported by the upstream."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Part of ``prompt_tokens`` served from the upstream's prompt cache.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


def chat_id(request_id: str) -> str:
    """The OpenAI completion id the gateway answers with for one request."""
    return f"chatcmpl-{request_id}"


def count(obj: dict[str, Any], key: str) -> int:
    """A non-negative token count from an upstream object; anything else counts as 0."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call; ``arguments`` that is not a string is JSON-encoded compactly."""
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, separators=(",", ":"))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


def chat_completion(*, request_id: str, model: str, created: int, content: str | None,
                    tool_calls: list[dict[str, Any]], finish_reason: str,
                    usage: TokenUsage) -> dict[str, Any]:
    """A complete non-streamed ``chat.completion`` with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": chat_id(request_id), "object": "chat.completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage.to_openai(), "system_fingerprint": None}


class ChunkBuilder:
    """Builds the ``chat.completion.chunk`` objects of one streamed completion.

    With ``include_usage`` every chunk carries ``"usage": null`` and the stream ends with a
    chunk whose ``choices`` is empty and whose ``usage`` is set, as OpenAI streams do.
    """

    def __init__(self, model: str, created: int, request_id: str, include_usage: bool) -> None:
        self._base = {"id": chat_id(request_id), "object": "chat.completion.chunk",
                      "created": created, "model": model, "system_fingerprint": None}
        self._include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {**self._base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def end(self, usage: TokenUsage) -> list[dict[str, Any]]:
        """The closing usage chunk when it was asked for, else nothing."""
        if not self._include_usage:
            return []
        return [{**self._base, "choices": [], "usage": usage.to_openai()}]


def error_body(message: str, err_type: str, code: str | None,
               param: str | None = None) -> dict[str, Any]:
    """The OpenAI error JSON shape."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}

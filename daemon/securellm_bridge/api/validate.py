"""Read and check a request body against its endpoint's schema, naming the bad field.

Only what the gateway itself relies on is checked here (model, messages/prompt/input,
stream flags). Everything else passes through to the upstream, which validates the rest.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidRequest
from ..providers.base import Route

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _bad(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {problem}", param=param, code="invalid_request_error")


def parse(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({type(exc).__name__})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    return body


def check(route: Route, body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required and must be a non-empty string")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    if route == "chat":
        _check_messages(body.get("messages"))
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise _bad("stream_options", "must be an object")
    elif route == "completions":
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
            raise _bad("prompt", "is required: a string or a non-empty array")
    else:
        if stream:
            raise _bad("stream", "is not supported for embeddings")
        text = body.get("input")
        if not (isinstance(text, str) or (isinstance(text, list) and text)):
            raise _bad("input", "is required: a string or a non-empty array")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _bad(key, "must be a positive integer")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "is required and must be a non-empty array")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(where, "must be an object")
        role = msg.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", f"must be one of {', '.join(sorted(_ROLES))}")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"{where}.content", "must be a string or an array of content parts")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(f"{where}.content[{j}]", "must be an object with a type")

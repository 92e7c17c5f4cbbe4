"""A fake Anthropic Messages API: ``POST /v1/messages``, plain and streamed.

Like the real API it requires ``x-api-key`` (checked against the behaviour's key when one is
set) and ``anthropic-version``, validates the request's structure (roles, non-empty text
blocks, tool_use / tool_result pairing, temperature range), and streams the full event
sequence: message_start, content_block_start, ping, content_block_delta...,
content_block_stop, message_delta, message_stop.

The reply echoes the last message (``echo: <text>``). When tools are offered and the last
user turn holds no tool_result (and ``tool_choice`` is not ``none``), the fake calls the
forced tool, else the first one, with ``{"input": <last message text>}``.
"""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from . import Reply, content_text, count_tokens, main, plan_reply
from . import dumps as _dumps
from .behaviour import Behaviour, Fault, add_control_routes, begin, status_headers, stream

DEFAULT_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
VERSIONS = frozenset({"2023-06-01", "2023-01-01"})
_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}
_STATUS_ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_BLOCK_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking",
                          "redacted_thinking"})
_ERROR_FRAME = (b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
                b'"message": "Overloaded"}}\n\n')
_MALFORMED_FRAME = (b'event: content_block_delta\n'
                    b'data: {"type": "content_block_delta", "index": 0, "delta": {\n\n')
_MALFORMED_BODY = b'{"id": "msg_broken", "type": "message", "content": ['
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_SSE = "text/event-stream; charset=utf-8"


def _compact(obj: Any) -> str:
    return _dumps(obj).decode()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


class _AnthropicFake:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.models = behaviour.models or DEFAULT_MODELS
        self._ids = itertools.count(1)

    def _error(self, status: int, err_type: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
        request_id = f"req_fake{next(self._ids):020d}"
        body = {"type": "error", "error": {"type": err_type, "message": message},
                "request_id": request_id}
        return web.Response(status=status, body=_dumps(body), content_type="application/json",
                            headers={"request-id": request_id, **(headers or {})})

    def _rejection(self, request: web.Request, fault: Fault | None) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if key is None:
            return self._error(401, "authentication_error", "x-api-key header is required")
        if not self.behaviour.key_matches(key):
            return self._error(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if version is None:
            return self._error(400, "invalid_request_error", "anthropic-version: header is required")
        if version not in VERSIONS:
            return self._error(400, "invalid_request_error",
                               f'anthropic-version: "{version}" is not a valid version')
        if fault is not None and fault.kind == "status":
            err_type, message = _STATUS_ERRORS.get(fault.status, ("api_error", f"HTTP {fault.status}"))
            return self._error(fault.status, err_type, message, status_headers(fault))
        return None

    def _invalid(self, body: Any) -> str | None:
        """The message of the 400 the real API answers for this body, or None if it is valid."""
        if not isinstance(body, dict):
            return "There was an issue with your request body: it is not valid JSON"
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return f"{field}: Field required"
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return "max_tokens: Input should be a valid integer greater than or equal to 1"
        temperature = body.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and
                                            0 <= temperature <= 1):
            return "temperature: range: 0..1"
        system = body.get("system")
        if system is not None and not isinstance(system, str) and not (
                isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                                 for b in system)):
            return "system: Input should be a valid string or a list of text blocks"
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        return _invalid_messages(messages)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body, fault = await begin(request, self.behaviour)
        early = self._rejection(request, fault)
        if early is not None:
            return early
        problem = self._invalid(body)
        if problem is not None:
            return self._error(400, "invalid_request_error", problem)
        if body["model"] not in self.models:
            return self._error(404, "not_found_error", f"model: {body['model']}")
        seq = next(self._ids)
        msg_id, model = f"msg_fake{seq:020d}", body["model"]
        last = body["messages"][-1]
        prompt = content_text(last.get("content"))
        input_tokens = count_tokens(content_text(body.get("system"))) + sum(
            count_tokens(content_text(m.get("content"))) for m in body["messages"])
        reply = plan_reply(prompt, max_tokens=body["max_tokens"], stop=body.get("stop_sequences") or [])
        tool = _tool_use(body, last, prompt, f"toolu_fake{seq:020d}")
        headers = {"request-id": f"req_fake{seq:020d}"}
        if body.get("stream") is True:
            frames = _stream_frames(msg_id, model, input_tokens, reply, tool)
            return await stream(request, self.behaviour, fault, frames, content_type=_SSE,
                                error_frame=_ERROR_FRAME, malformed_frame=_MALFORMED_FRAME,
                                headers=headers)
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json", headers=headers)
        if tool is not None:
            content, stop_reason, output = [tool], "tool_use", count_tokens(_compact(tool["input"]))
        else:
            content, stop_reason, output = [{"type": "text", "text": reply.text}], \
                _STOP[reply.finish], len(reply.pieces)
        payload = {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop_reason,
                   "stop_sequence": reply.stop_sequence if tool is None else None,
                   "usage": _usage(input_tokens, output)}
        return web.Response(body=_dumps(payload), content_type="application/json", headers=headers)


def _invalid_messages(messages: list[Any]) -> str | None:
    pending_tool_uses: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid list"
        results: set[str] = set()
        for j, block in enumerate(blocks):
            if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
                return f"messages.{i}.content.{j}.type: Input tag does not match any of the expected tags"
            if block["type"] == "text" and not block.get("text"):
                return "messages: text content blocks must be non-empty"
            if block["type"] == "tool_result":
                if block.get("tool_use_id") not in pending_tool_uses:
                    return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                            "blocks. Each `tool_result` block must have a corresponding `tool_use` "
                            "block in the previous message.")
                results.add(block["tool_use_id"])
        if pending_tool_uses - results:
            return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    "immediately after. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message.")
        pending_tool_uses = {b.get("id") for b in blocks if b["type"] == "tool_use"}
    return None


def _tool_use(body: dict[str, Any], last: dict[str, Any], prompt: str,
              tool_id: str) -> dict[str, Any] | None:
    tools, choice = body.get("tools"), body.get("tool_choice") or {}
    content = last.get("content")
    has_result = isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    if not tools or choice.get("type") == "none" or has_result:
        return None
    name = choice.get("name") if choice.get("type") == "tool" else tools[0]["name"]
    return {"type": "tool_use", "id": tool_id, "name": name, "input": {"input": prompt}}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "output_tokens": output_tokens, "service_tier": "standard"}


def _stream_frames(msg_id: str, model: str, input_tokens: int, reply: Reply,
                   tool: dict[str, Any] | None) -> list[bytes]:
    frames = [_event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _usage(input_tokens, 1)}})]
    if tool is not None:
        arguments = _compact(tool["input"])
        half = len(arguments) // 2
        frames += [_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {**tool, "input": {}}}), _PING]
        frames += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "input_json_delta",
                                                            "partial_json": part}})
                   for part in ("", arguments[:half], arguments[half:])]
        stop_reason, stop_sequence, output = "tool_use", None, count_tokens(arguments)
    else:
        frames += [_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}),
                   _PING]
        frames += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": piece}})
                   for piece in reply.pieces]
        stop_reason, stop_sequence, output = _STOP[reply.finish], reply.stop_sequence, len(reply.pieces)
    frames += [_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": stop_reason,
                                                  "stop_sequence": stop_sequence},
                                        "usage": {"output_tokens": output}}),
               _event("message_stop", {"type": "message_stop"})]
    return frames


def make_app(behaviour: Behaviour) -> web.Application:
    fake = _AnthropicFake(behaviour)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", fake.messages)
    add_control_routes(app, behaviour)
    return app


if __name__ == "__main__":
    main(make_app)

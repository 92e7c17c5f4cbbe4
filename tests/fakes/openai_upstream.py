"""A fake OpenAI API: chat completions (plain and SSE), completions, embeddings, models.

Replies echo the last message (``echo: <text>``). When the request offers tools (and the
last message is not a tool result, and ``tool_choice`` is not ``"none"``) the fake calls the
forced tool, else the first one, with ``{"input": <last message text>}``.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import Reply, content_text, count_tokens, fake_embedding, main, plan_reply
from . import dumps as _dumps
from .behaviour import Behaviour, Fault, add_control_routes, begin, status_headers, stream

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
_FINGERPRINT = "fp_fake0001"
_MODEL_CREATED = 1_700_000_000
_FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length"}
_STATUS_ERRORS = {
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
_NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization "
           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
_BAD_KEY = ("Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.")
_BAD_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you "
             "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
             "but what was sent was not valid JSON.)")
_MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": ['
_MALFORMED_FRAME = b'data: {"id": "chatcmpl-broken", "choices": [\n\n'
_ERROR_FRAME = (b'data: {"error":{"message":"The server had an error while processing your '
                b'request. Sorry about that!","type":"server_error","param":null,"code":null}}\n\n')
_DONE = b"data: [DONE]\n\n"
_SSE = "text/event-stream; charset=utf-8"


@dataclass(frozen=True, slots=True)
class _ToolCall:
    id: str
    name: str
    arguments: str


def _error(status: int, message: str, err_type: str, code: str | None, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return web.Response(status=status, body=_dumps(body), content_type="application/json",
                        headers=headers)


class _OpenAIFake:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.models = behaviour.models or DEFAULT_MODELS
        self._ids = itertools.count(1)
        self._models_body = _dumps({"object": "list", "data": [
            {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": "openai"}
            for m in self.models]})

    def _rejection(self, request: web.Request, fault: Fault | None) -> web.Response | None:
        """Authentication, then a scripted status: what a real API checks before the body."""
        if self.behaviour.api_key is not None:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return _error(401, _NO_KEY, "invalid_request_error", None)
            if not self.behaviour.key_matches(header[7:]):
                return _error(401, _BAD_KEY, "invalid_request_error", "invalid_api_key")
        if fault is not None and fault.kind == "status":
            message, err_type, code = _STATUS_ERRORS.get(fault.status, (
                f"HTTP {fault.status}", "server_error" if fault.status >= 500 else
                "invalid_request_error", None))
            return _error(fault.status, message, err_type, code, headers=status_headers(fault))
        return None

    def _checked(self, body: Any, required: tuple[str, ...]) -> web.Response | None:
        if not isinstance(body, dict):
            return _error(400, _BAD_JSON, "invalid_request_error", None)
        for param in required:
            if body.get(param) is None:
                return _error(400, f"Missing required parameter: '{param}'.", "invalid_request_error",
                              "missing_required_parameter", param)
        if body["model"] not in self.models:
            return _error(404, f"The model `{body['model']}` does not exist or you do not have "
                          "access to it.", "invalid_request_error", "model_not_found")
        return None

    async def _prologue(self, request: web.Request, required: tuple[str, ...]
                        ) -> tuple[dict[str, Any], Fault | None, web.Response | None]:
        body, fault = await begin(request, self.behaviour)
        early = self._rejection(request, fault) or self._checked(body, required)
        return body, fault, early

    async def _answer(self, request: web.Request, body: dict[str, Any], fault: Fault | None,
                      frames: list[bytes], payload: dict[str, Any]) -> web.StreamResponse:
        headers = {"x-request-id": f"req_{next(self._ids):016x}"}
        if body.get("stream") is True:
            return await stream(request, self.behaviour, fault, frames, content_type=_SSE,
                          error_frame=_ERROR_FRAME, malformed_frame=_MALFORMED_FRAME, headers=headers)
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json", headers=headers)
        return web.Response(body=_dumps(payload), content_type="application/json", headers=headers)

    # ------------------------------------------------------------------ chat completions

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request, ("model", "messages"))
        if early is not None:
            return early
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return _error(400, "Invalid 'messages': empty array.", "invalid_request_error",
                          "empty_array", "messages")
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        prompt = content_text(last.get("content"))
        prompt_tokens = sum(count_tokens(content_text(m.get("content")))
                            for m in messages if isinstance(m, dict))
        stop = body.get("stop") or []
        reply = plan_reply(prompt, max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                           stop=[stop] if isinstance(stop, str) else stop)
        seq = next(self._ids)
        call = self._tool_call(body, last, prompt, f"call_fake{seq}")
        cid, created, model = f"chatcmpl-fake{seq}", int(time.time()), body["model"]
        n = body.get("n") or 1
        completion = n * (len(reply.pieces) if call is None else count_tokens(call.arguments))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0,
                                               "rejected_prediction_tokens": 0}}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": _FINGERPRINT}
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        frames = _chat_frames(base, reply, call, n, usage if with_usage else None)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text if call is None else None,
                                   "refusal": None, "annotations": []}
        if call is not None:
            message["tool_calls"] = [{"id": call.id, "type": "function",
                                      "function": {"name": call.name, "arguments": call.arguments}}]
        finish = "tool_calls" if call is not None else _FINISH[reply.finish]
        payload = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": i, "message": message, "logprobs": None,
                                "finish_reason": finish} for i in range(n)],
                   "usage": usage, "service_tier": "default", "system_fingerprint": _FINGERPRINT}
        return await self._answer(request, body, fault, frames, payload)

    @staticmethod
    def _tool_call(body: dict[str, Any], last: dict[str, Any], prompt: str,
                   call_id: str) -> _ToolCall | None:
        tools, choice = body.get("tools"), body.get("tool_choice")
        if not tools or choice == "none" or last.get("role") == "tool":
            return None
        forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        return _ToolCall(call_id, forced or tools[0]["function"]["name"], json.dumps({"input": prompt}))

    # ------------------------------------------------------------------------ completions

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request, ("model", "prompt"))
        if early is not None:
            return early
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        stop = body.get("stop") or []
        replies = [plan_reply(str(p), max_tokens=body.get("max_tokens", 16),
                              stop=[stop] if isinstance(stop, str) else stop) for p in prompts]
        cid, created, model = f"cmpl-fake{next(self._ids)}", int(time.time()), body["model"]
        prompt_tokens = sum(count_tokens(str(p)) for p in prompts)
        completion = sum(len(r.pieces) for r in replies)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        base = {"id": cid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": _FINGERPRINT}
        frames = []
        for i, reply in enumerate(replies):
            frames += [b"data: " + _dumps({**base, "choices": [
                {"text": piece, "index": i, "logprobs": None, "finish_reason": None}]}) + b"\n\n"
                for piece in reply.pieces]
            frames.append(b"data: " + _dumps({**base, "choices": [
                {"text": "", "index": i, "logprobs": None,
                 "finish_reason": _FINISH[reply.finish]}]}) + b"\n\n")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            frames.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        frames.append(_DONE)
        payload = {**base, "choices": [{"text": r.text, "index": i, "logprobs": None,
                                        "finish_reason": _FINISH[r.finish]}
                                       for i, r in enumerate(replies)], "usage": usage}
        return await self._answer(request, body, fault, frames, payload)

    # ------------------------------------------------------------------------- embeddings

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request, ("model", "input"))
        if early is not None:
            return early
        raw = body["input"]
        if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            raw = [raw]  # one prompt given as a token array
        texts = [raw] if isinstance(raw, str) else [
            x if isinstance(x, str) else " ".join(map(str, x)) for x in raw] if isinstance(raw, list) else []
        if not all(texts) or not texts:
            return _error(400, "'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.",
                          "invalid_request_error", None)
        dims = body.get("dimensions") or 32
        data = []
        for index, text in enumerate(texts):
            vector: Any = fake_embedding(text, dims)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(count_tokens(t) for t in texts)
        payload = {"object": "list", "data": data, "model": body["model"],
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return await self._answer(request, {}, fault, [], payload)

    # ----------------------------------------------------------------------------- models

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        _, fault = await begin(request, self.behaviour)
        early = self._rejection(request, fault)
        if early is not None:
            return early
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json")
        return web.Response(body=self._models_body, content_type="application/json")

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        _, fault = await begin(request, self.behaviour)
        early = self._rejection(request, fault)
        if early is not None:
            return early
        name = request.match_info["model"]
        if name not in self.models:
            return _error(404, f"The model '{name}' does not exist", "invalid_request_error",
                          "model_not_found", "model")
        return web.json_response({"id": name, "object": "model", "created": _MODEL_CREATED,
                                  "owned_by": "openai"})


def _chat_frames(base: dict[str, Any], reply: Reply, call: _ToolCall | None, n: int,
                 usage: dict[str, Any] | None) -> list[bytes]:
    extra = {"usage": None} if usage is not None else {}

    def frame(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + _dumps({**base, "choices": [choice], **extra}) + b"\n\n"

    frames = []
    for i in range(n):
        if call is not None:
            frames.append(frame(i, {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": ""}}], "refusal": None}))
            half = len(call.arguments) // 2
            frames += [frame(i, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                       for part in (call.arguments[:half], call.arguments[half:])]
            frames.append(frame(i, {}, "tool_calls"))
            continue
        frames.append(frame(i, {"role": "assistant", "content": "", "refusal": None}))
        frames += [frame(i, {"content": piece}) for piece in reply.pieces]
        frames.append(frame(i, {}, _FINISH[reply.finish]))
    if usage is not None:
        frames.append(b"data: " + _dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    frames.append(_DONE)
    return frames


def make_app(behaviour: Behaviour) -> web.Application:
    fake = _OpenAIFake(behaviour)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_post("/v1/embeddings", fake.embeddings)
    app.router.add_get("/v1/models", fake.list_models)
    app.router.add_get("/v1/models/{model}", fake.get_model)
    add_control_routes(app, behaviour)
    return app


if __name__ == "__main__":
    main(make_app)

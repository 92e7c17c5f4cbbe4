"""A fake Ollama server: /api/chat, /api/generate, /api/embed, /api/tags, /api/ps, /api/version.

Streaming is on unless the request says ``"stream": false`` (as in real Ollama), as NDJSON
(``application/x-ndjson``) ending with a ``done: true`` object that carries ``done_reason``,
``prompt_eval_count``, ``eval_count`` and the durations. Which models are loaded is kept in
memory: every chat / generate / embed loads its model for ``keep_alive`` (default 5m, a
negative value means forever), ``keep_alive: 0`` unloads it, and an empty prompt (generate)
or an empty message list (chat) only loads / unloads, answering ``done_reason`` ``load`` /
``unload``. ``/api/ps`` reports ``size``, ``size_vram`` and ``expires_at``.

The reply echoes the last message (``echo: <text>``); with tools (and the last message not a
tool result) the fake calls the first tool with ``{"input": <last message text>}``. An API
key, when the behaviour sets one, is checked as ``Authorization: Bearer`` (Ollama behind an
authenticating proxy).
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import content_text, count_tokens, fake_embedding, main, plan_reply
from . import dumps as _dumps
from .behaviour import Behaviour, Fault, add_control_routes, begin, status_headers, stream

DEFAULT_MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest")
VERSION = "0.12.6"
_DEFAULT_KEEP_ALIVE = 300.0
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC).timestamp()
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_STATUS_ERRORS = {
    429: "too many requests",
    500: "an error was encountered while running the model",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_ERROR_FRAME = b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
_MALFORMED_FRAME = b'{"model":"broken","created_at":"2024-01-01T00:00:00Z","message":{"role":\n'
_MALFORMED_BODY = b'{"model":"broken","message":{"role":"assistant","content":'
_NDJSON = "application/x-ndjson"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_dumps({"error": message}),
                        content_type="application/json", headers=headers)


def _created_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _qualified(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def keep_alive_seconds(value: Any) -> float:
    """Seconds a model stays loaded: numbers are seconds, strings Go durations ("5m", "1h30m");
    negative means forever, 0 means unload now."""
    if value is None:
        return _DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if re.fullmatch(r"-?\d+(\.\d+)?", value):
            return float(value)
        parts = _DURATION.findall(value)
        if parts and "".join(n + u for n, u in parts) == value:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"invalid keep_alive {value!r}")


class _OllamaFake:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.models = {_qualified(m): self._info(_qualified(m))
                       for m in (behaviour.models or DEFAULT_MODELS)}
        self.loaded: dict[str, float] = {}  # model -> expires_at (epoch seconds)
        self._tags_body = _dumps({"models": [
            {"name": m, "model": m, "modified_at": "2025-01-01T00:00:00.000000000Z",
             "size": info["size"], "digest": info["digest"], "details": info["details"]}
            for m, info in self.models.items()]})

    @staticmethod
    def _info(name: str) -> dict[str, Any]:
        digest = hashlib.sha256(name.encode()).hexdigest()
        family = name.split(":")[0].rstrip("0123456789.-") or "llama"
        size = 200_000_000 * (int(digest[:2], 16) % 8 + 1)
        return {"size": size, "digest": digest, "details": {
            "parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": f"{size / 1e9:.1f}B", "quantization_level": "Q4_K_M"}}

    def _rejection(self, request: web.Request, fault: Fault | None) -> web.Response | None:
        if self.behaviour.api_key is not None:
            header = request.headers.get("Authorization", "")
            if not (header.startswith("Bearer ") and self.behaviour.key_matches(header[7:])):
                return _error(401, "unauthorized")
        if fault is not None and fault.kind == "status":
            return _error(fault.status, _STATUS_ERRORS.get(fault.status, f"HTTP {fault.status}"),
                          status_headers(fault))
        return None

    async def _prologue(self, request: web.Request) -> tuple[Any, Fault | None, web.Response | None]:
        body, fault = await begin(request, self.behaviour)
        early = self._rejection(request, fault)
        if early is None and request.method == "POST":
            if not isinstance(body, dict):
                early = _error(400, "invalid request body")
            elif not body.get("model"):
                early = _error(400, "model is required")
            elif _qualified(body["model"]) not in self.models:
                early = _error(404, f'model "{body["model"]}" not found, try pulling it first')
            else:
                try:
                    keep_alive_seconds(body.get("keep_alive"))
                except ValueError as exc:
                    early = _error(400, str(exc))
        return body, fault, early

    def _touch(self, model: str, keep_alive: Any) -> str:
        """Load or unload ``model`` as a request with this ``keep_alive`` does."""
        seconds = keep_alive_seconds(keep_alive)
        name = _qualified(model)
        if seconds == 0:
            self.loaded.pop(name, None)
            return "unload"
        self.loaded[name] = _FOREVER if seconds < 0 else time.time() + seconds
        return "load"

    async def _answer(self, request: web.Request, body: dict[str, Any], fault: Fault | None,
                      lines: list[dict[str, Any]], payload: dict[str, Any]) -> web.StreamResponse:
        if body.get("stream", True) is not False:
            frames = [_dumps(line) + b"\n" for line in lines]
            return await stream(request, self.behaviour, fault, frames, content_type=_NDJSON,
                                error_frame=_ERROR_FRAME, malformed_frame=_MALFORMED_FRAME)
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json")
        return web.Response(body=_dumps(payload), content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        model, messages = body["model"], body.get("messages") or []
        head = {"model": model, "created_at": _created_at()}
        if not messages:
            reason = self._touch(model, body.get("keep_alive"))
            done = {**head, "message": {"role": "assistant", "content": ""}, "done_reason": reason,
                    "done": True}
            return await self._answer(request, body, fault, [done], done)
        self._touch(model, body.get("keep_alive"))
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        prompt = content_text(last.get("content"))
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        reply = plan_reply(prompt, max_tokens=options.get("num_predict"), stop=options.get("stop") or [])
        tools = body.get("tools")
        calls = [{"function": {"name": tools[0]["function"]["name"], "arguments": {"input": prompt}}}] \
            if tools and last.get("role") != "tool" else []
        stats = _stats(sum(count_tokens(content_text(m.get("content"))) for m in messages
                           if isinstance(m, dict)), 1 if calls else len(reply.pieces))
        finish = "length" if reply.finish == "length" else "stop"
        end = {"role": "assistant", "content": ""}
        if calls:
            lines = [{**head, "message": {"role": "assistant", "content": "", "tool_calls": calls},
                      "done": False}]
        else:
            lines = [{**head, "message": {"role": "assistant", "content": piece}, "done": False}
                     for piece in reply.pieces]
        lines.append({**head, "message": end, "done_reason": finish, "done": True, **stats})
        message: dict[str, Any] = {"role": "assistant", "content": "" if calls else reply.text}
        if calls:
            message["tool_calls"] = calls
        payload = {**head, "message": message, "done_reason": finish, "done": True, **stats}
        return await self._answer(request, body, fault, lines, payload)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        model, prompt = body["model"], body.get("prompt") or ""
        reason = self._touch(model, body.get("keep_alive"))
        head = {"model": model, "created_at": _created_at()}
        if not prompt:
            done = {**head, "response": "", "done": True, "done_reason": reason}
            return await self._answer(request, body, fault, [done], done)
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        reply = plan_reply(str(prompt), max_tokens=options.get("num_predict"),
                           stop=options.get("stop") or [])
        stats = _stats(count_tokens(str(prompt)), len(reply.pieces))
        finish = "length" if reply.finish == "length" else "stop"
        tail = {"done": True, "done_reason": finish, "context": list(range(1, stats["eval_count"] + 1)),
                **stats}
        lines = [{**head, "response": piece, "done": False} for piece in reply.pieces]
        lines.append({**head, "response": "", **tail})
        return await self._answer(request, body, fault, lines, {**head, "response": reply.text, **tail})

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid input type")
        self._touch(body["model"], body.get("keep_alive"))
        dims = body.get("dimensions") or 32
        tokens = sum(count_tokens(t) for t in texts)
        payload = {"model": body["model"], "embeddings": [fake_embedding(t, dims) for t in texts],
                   "total_duration": 1_000_000 * (tokens + 1), "load_duration": 100_000,
                   "prompt_eval_count": tokens}
        return await self._answer(request, {"stream": False}, fault, [], payload)

    async def tags(self, request: web.Request) -> web.StreamResponse:
        _, fault, early = await self._prologue(request)
        if early is not None:
            return early
        return await self._static(fault, self._tags_body)

    async def ps(self, request: web.Request) -> web.StreamResponse:
        _, fault, early = await self._prologue(request)
        if early is not None:
            return early
        now = time.time()
        self.loaded = {m: t for m, t in self.loaded.items() if t > now}
        running = [{"name": m, "model": m, "size": self.models[m]["size"],
                    "digest": self.models[m]["digest"], "details": self.models[m]["details"],
                    "expires_at": datetime.fromtimestamp(t).astimezone().isoformat(),
                    "size_vram": self.models[m]["size"], "context_length": 4096}
                   for m, t in self.loaded.items()]
        return await self._static(fault, _dumps({"models": running}))

    async def version(self, request: web.Request) -> web.StreamResponse:
        _, fault, early = await self._prologue(request)
        if early is not None:
            return early
        return await self._static(fault, _dumps({"version": VERSION}))

    @staticmethod
    async def root(_: web.Request) -> web.Response:
        """Liveness, as real Ollama answers it; it neither takes faults nor is recorded."""
        return web.Response(text="Ollama is running")

    @staticmethod
    async def _static(fault: Fault | None, body: bytes) -> web.Response:
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=_MALFORMED_BODY, content_type="application/json")
        return web.Response(body=body, content_type="application/json")


def _stats(prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
    return {"total_duration": 1_000_000 * (prompt_tokens + eval_tokens + 1), "load_duration": 100_000,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1_000_000 * prompt_tokens,
            "eval_count": eval_tokens, "eval_duration": 1_000_000 * eval_tokens}


def make_app(behaviour: Behaviour) -> web.Application:
    fake = _OllamaFake(behaviour)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/chat", fake.chat)
    app.router.add_post("/api/generate", fake.generate)
    app.router.add_post("/api/embed", fake.embed)
    app.router.add_get("/api/tags", fake.tags)
    app.router.add_get("/api/ps", fake.ps)
    app.router.add_get("/api/version", fake.version)
    app.router.add_get("/", fake.root)
    add_control_routes(app, behaviour)
    return app


if __name__ == "__main__":
    main(make_app)

"""The fake upstreams: real wire shapes, every scripted fault, control endpoints, CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import openai
import pytest

from securellm_bridge.errors import UpstreamError
from securellm_bridge.providers.sse import NDJSONParser, SSEParser, json_data
from tests.fakes import fake_embedding, plan_reply, running
from tests.fakes import anthropic_upstream, ollama_upstream, openai_upstream
from tests.fakes.behaviour import Behaviour, Fault

pytestmark = pytest.mark.anyio

KEY = "sk-fake-test-key-0123456789"
SHORT = aiohttp.ClientTimeout(total=5, sock_read=0.3)
MESSAGES = [{"role": "user", "content": "hello fake world"}]


@dataclass(frozen=True)
class Kind:
    """How to talk to one fake: module, auth headers, a chat request, stream framing."""

    module: ModuleType
    headers: dict[str, str]
    path: str
    body: dict[str, Any]
    frames: Callable[[bytes], list[dict[str, Any]]]  # parses a streamed body, raises if malformed
    error_ok: Callable[[dict[str, Any]], bool]  # is this the vendor's error body shape?
    stream_end: Callable[[dict[str, Any]], bool]  # is this the last frame of a stream?


def _sse_objects(raw: bytes) -> list[dict[str, Any]]:
    return [{"event": ev.event, **json_data(ev.data)} for ev in SSEParser().feed(raw)
            if ev.data != "[DONE]"] + ([{"done": True}] if b"data: [DONE]" in raw else [])


KINDS = {
    "openai": Kind(openai_upstream, {"Authorization": f"Bearer {KEY}"}, "/v1/chat/completions",
                   {"model": "gpt-4o-mini", "messages": MESSAGES}, _sse_objects,
                   lambda b: set(b["error"]) == {"message", "type", "param", "code"},
                   lambda f: f.get("done") is True),
    "anthropic": Kind(anthropic_upstream, {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                      "/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64,
                                       "messages": MESSAGES}, _sse_objects,
                      lambda b: b["type"] == "error" and isinstance(b["error"]["type"], str),
                      lambda f: f.get("event") == "message_stop"),
    "ollama": Kind(ollama_upstream, {"Authorization": f"Bearer {KEY}"}, "/api/chat",
                   {"model": "llama3.2:1b", "messages": MESSAGES},
                   lambda raw: [o for o in NDJSONParser().feed(raw)],
                   lambda b: isinstance(b["error"], str), lambda f: f.get("done") is True),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


@contextlib.asynccontextmanager
async def serve(module: ModuleType,
                **behaviour: Any) -> AsyncIterator[tuple[Behaviour, str, aiohttp.ClientSession]]:
    fake = Behaviour(api_key=KEY, **behaviour)
    async with running(module.make_app(fake)) as url, aiohttp.ClientSession(timeout=SHORT) as http:
        yield fake, url, http


async def _post(http: aiohttp.ClientSession, url: str, kind: Kind, stream: bool) -> tuple[int, bytes]:
    async with http.post(url + kind.path, headers=kind.headers,
                         json={**kind.body, "stream": stream}) as resp:
        return resp.status, await resp.read()


# ------------------------------------------------------------------------ every fake


@pytest.mark.parametrize("chunk_delay", [0.0, 0.001])
async def test_stream_happy_path(kind: Kind, chunk_delay: float) -> None:
    async with serve(kind.module, chunk_delay=chunk_delay) as (_, url, http):
        status, raw = await _post(http, url, kind, stream=True)
    frames = kind.frames(raw)
    assert status == 200 and kind.stream_end(frames[-1])
    assert sum(kind.stream_end(f) for f in frames) == 1


async def test_status_faults_are_consumed_in_order(kind: Kind) -> None:
    async with serve(kind.module, faults=["500", "503", "429:7"]) as (fake, url, http):
        for expected in (500, 503, 429):
            async with http.post(url + kind.path, headers=kind.headers, json=kind.body) as resp:
                assert resp.status == expected
                assert kind.error_ok(await resp.json())
                assert resp.headers.get("Retry-After") == ("7" if expected == 429 else None)
        assert fake.pending_faults == 0
        assert (await _post(http, url, kind, stream=False))[0] == 200


async def test_wrong_key_is_rejected_in_the_vendor_shape(kind: Kind) -> None:
    async with serve(kind.module) as (_, url, http):
        headers = {k: ("Bearer wrong" if k == "Authorization" else "wrong") if k != "anthropic-version"
                   else v for k, v in kind.headers.items()}
        async with http.post(url + kind.path, headers=headers, json=kind.body) as resp:
            assert resp.status == 401
            assert kind.error_ok(await resp.json())


@pytest.mark.parametrize("stream", [False, True])
async def test_timeout_then_recovery(kind: Kind, stream: bool) -> None:
    async with serve(kind.module, faults=["timeout"]) as (_, url, http):
        with pytest.raises(TimeoutError):
            await _post(http, url, kind, stream)
        assert (await _post(http, url, kind, stream))[0] == 200


async def test_reset_before_answer_then_recovery(kind: Kind) -> None:
    async with serve(kind.module, faults=["reset"]) as (_, url, http):
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await _post(http, url, kind, stream=False)
        assert (await _post(http, url, kind, stream=False))[0] == 200


async def test_reset_mid_stream(kind: Kind) -> None:
    async with serve(kind.module, faults=["reset_after:2"]) as (_, url, http):
        async with http.post(url + kind.path, headers=kind.headers,
                             json={**kind.body, "stream": True}) as resp:
            assert resp.status == 200
            received = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for data in resp.content.iter_any():
                    received += data
        complete = received[:received.rfind(b"\n\n") + 2] if kind.module is not ollama_upstream \
            else received[:received.rfind(b"\n") + 1]
        assert not any(kind.stream_end(f) for f in kind.frames(complete))


async def test_error_after_n_chunks(kind: Kind) -> None:
    async with serve(kind.module, faults=["error_after:2"]) as (_, url, http):
        status, raw = await _post(http, url, kind, stream=True)
    frames = kind.frames(raw)
    assert status == 200 and len(frames) == 3
    assert not any(kind.stream_end(f) for f in frames)
    last = frames[-1]
    if kind.module is anthropic_upstream:
        assert last["event"] == "error" and last["error"]["type"] == "overloaded_error"
    else:
        assert "error" in last


async def test_stall_mid_stream_then_recovery(kind: Kind) -> None:
    async with serve(kind.module, faults=["stall_after:1"]) as (_, url, http):
        with pytest.raises(TimeoutError):
            await _post(http, url, kind, stream=True)
        assert (await _post(http, url, kind, stream=True))[0] == 200


async def test_malformed_body_and_stream(kind: Kind) -> None:
    async with serve(kind.module, faults=["malformed", "malformed"]) as (_, url, http):
        status, raw = await _post(http, url, kind, stream=False)
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(raw)
        status, raw = await _post(http, url, kind, stream=True)
    assert status == 200
    with pytest.raises(UpstreamError, match="malformed JSON"):
        kind.frames(raw)


async def test_control_endpoints(kind: Kind) -> None:
    async with serve(kind.module) as (fake, url, http):
        async with http.post(url + "/_fake/script", json={"faults": ["503", "bogus"]}) as resp:
            assert resp.status == 400
        async with http.post(url + "/_fake/script", json={"faults": ["503"], "delay": 0.0}) as resp:
            assert (await resp.json()) == {"pending_faults": 1}
        assert (await _post(http, url, kind, stream=False))[0] == 503
        async with http.get(url + "/_fake/requests") as resp:
            [recorded] = (await resp.json())["requests"]
        assert recorded["path"] == kind.path and recorded["body"] == {**kind.body, "stream": False}
        assert KEY not in json.dumps(recorded)
        assert "x-api-key" not in {h.lower() for h in recorded["headers"]}
        async with http.post(url + "/_fake/script", json={"faults": ["500"]}):
            pass
        async with http.post(url + "/_fake/reset") as resp:
            assert resp.status == 200
        assert fake.requests == [] and fake.pending_faults == 0
        assert (await _post(http, url, kind, stream=False))[0] == 200


# ---------------------------------------------------------------------- behaviour unit


@pytest.mark.parametrize("spec,fault", [
    ("500", Fault("status", status=500)), ("429:2.5", Fault("status", status=429, retry_after=2.5)),
    ("timeout", Fault("timeout")), ("reset", Fault("reset")), ("malformed", Fault("malformed")),
    ("reset_after:3", Fault("reset_after", after=3)), ("error_after:0", Fault("error_after")),
    ("stall_after:1", Fault("stall_after", after=1))])
def test_fault_parse(spec: str, fault: Fault) -> None:
    assert Fault.parse(spec) == fault


@pytest.mark.parametrize("spec", ["200", "600", "429:x", "429:-1", "reset_after", "timeout:3", "boom"])
def test_fault_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        Fault.parse(spec)


def test_behaviour_hides_its_key_and_scripts_atomically() -> None:
    fake = Behaviour(api_key=KEY, faults=["500"])
    assert KEY not in repr(fake)
    with pytest.raises(ValueError):
        fake.script(["503", "nope"])
    assert fake.pending_faults == 1
    assert fake.key_matches(KEY) and not fake.key_matches(KEY[:-1]) and not fake.key_matches(None)
    assert Behaviour().key_matches(None)


def test_reply_plan() -> None:
    assert plan_reply("a b c").text == "echo: a b c"
    assert plan_reply("a b c", max_tokens=2) == plan_reply("a b c", max_tokens=2)
    assert plan_reply("a b c", max_tokens=2).pieces == ("echo:", " a")
    assert plan_reply("a b c", max_tokens=2).finish == "length"
    cut = plan_reply("a STOP c STOP", stop=["zzz", "STOP"])
    assert (cut.pieces, cut.finish, cut.stop_sequence) == (("echo:", " a", " "), "stop_sequence", "STOP")


# --------------------------------------------------------------------- OpenAI, by its SDK

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


async def test_openai_sdk_against_the_fake() -> None:
    async with serve(openai_upstream) as (fake, url, _):
        client = openai.AsyncOpenAI(api_key=KEY, base_url=url + "/v1", max_retries=0, timeout=5)
        chat = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
        assert (chat.choices[0].message.content, chat.choices[0].finish_reason) == ("echo: hello", "length")
        assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 2)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            "echo: hello fake world"
        assert chunks[-1].usage.completion_tokens == 4
        tool = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
        [call] = tool.choices[0].message.tool_calls
        assert (call.function.name, tool.choices[0].finish_reason) == ("lookup", "tool_calls")
        streamed = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                        tools=TOOLS, stream=True)
        arguments = "".join([tc.function.arguments async for c in streamed
                             for tc in (c.choices[0].delta.tool_calls or [])])
        assert json.loads(arguments) == json.loads(call.function.arguments) == {"input": "hello fake world"}
        text = await client.completions.create(model="gpt-4o-mini", prompt="say this")
        assert text.choices[0].text == "echo: say this"
        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"], dimensions=8)
        assert [d.embedding for d in emb.data] == [fake_embedding("a b", 8), fake_embedding("c", 8)]
        assert fake.requests[-1].body["encoding_format"] == "base64"
        assert [m.id async for m in client.models.list()] == list(openai_upstream.DEFAULT_MODELS)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.with_options(api_key="wrong").models.list()
        assert denied.value.code == "invalid_api_key"
        await client.close()


@pytest.mark.parametrize("fault,stream,error", [
    ("429:1", False, openai.RateLimitError), ("500", False, openai.InternalServerError),
    ("503", False, openai.InternalServerError), ("timeout", False, openai.APITimeoutError),
    ("reset", False, openai.APIConnectionError), ("malformed", False, json.JSONDecodeError),
    ("reset_after:2", True, openai.APIConnectionError), ("error_after:2", True, openai.APIError),
    ("stall_after:1", True, openai.APITimeoutError), ("malformed", True, json.JSONDecodeError)])
async def test_openai_sdk_sees_each_fault(fault: str, stream: bool, error: type[Exception]) -> None:
    async with serve(openai_upstream, faults=[fault]) as (_, url, _http):
        client = openai.AsyncOpenAI(api_key=KEY, base_url=url + "/v1", max_retries=0, timeout=0.3)
        with pytest.raises(error) as raised:
            resp = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                        stream=stream)
            if stream:
                async for _ in resp:
                    pass
        assert raised.type is error
        await client.close()


# ------------------------------------------------------------------------------ Anthropic


async def test_anthropic_required_headers_answer_like_the_real_api() -> None:
    cases = [({}, 401, "authentication_error", "x-api-key header is required"),
             ({"x-api-key": "nope"}, 401, "authentication_error", "invalid x-api-key"),
             ({"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version: header is required"),
             ({"x-api-key": KEY, "anthropic-version": "2099-01-01"}, 400, "invalid_request_error",
              'anthropic-version: "2099-01-01" is not a valid version')]
    async with serve(anthropic_upstream) as (_, url, http):
        for headers, status, err_type, message in cases:
            async with http.post(url + "/v1/messages", headers=headers,
                                 json=KINDS["anthropic"].body) as resp:
                body = await resp.json()
                assert resp.status == status and body["type"] == "error"
                assert body["error"] == {"type": err_type, "message": message}
                assert resp.headers["request-id"] == body["request_id"]


TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}


@pytest.mark.parametrize("change,status,message", [
    ({"max_tokens": None}, 400, "max_tokens: Field required"),
    ({"temperature": 1.5}, 400, "temperature: range: 0..1"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, 400,
     "messages: text content blocks must be non-empty"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "messages.0.role: Input should be"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}, 400,
     "messages.0.content.0: unexpected `tool_use_id`"),
    ({"messages": [TOOL_USE, {"role": "user", "content": "no result"}]}, 400,
     "messages.0: `tool_use` ids were found without `tool_result` blocks"),
    ({"model": "claude-nope"}, 404, "model: claude-nope")])
async def test_anthropic_validates_like_the_real_api(change: dict[str, Any], status: int,
                                                     message: str) -> None:
    body = {k: v for k, v in {**KINDS["anthropic"].body, **change}.items() if v is not None}
    headers = KINDS["anthropic"].headers
    async with serve(anthropic_upstream) as (_, url, http), \
            http.post(url + "/v1/messages", headers=headers, json=body) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["message"].startswith(message)


async def test_anthropic_stream_has_the_full_event_sequence() -> None:
    async with serve(anthropic_upstream) as (_, url, http):
        _, raw = await _post(http, url, KINDS["anthropic"], stream=True)
    events = [ev.event for ev in SSEParser().feed(raw)]
    assert events == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 4,
                      "content_block_stop", "message_delta", "message_stop"]
    assert b'data: {"type": "ping"}\n\n' in raw


async def test_anthropic_translation_round_trip_with_tools() -> None:
    from securellm_bridge.providers.anthropic_translate import (AnthropicStreamTranslator,
                                                                anthropic_to_chat, chat_to_anthropic)
    chat = {"model": "claude-haiku-4-5", "messages": MESSAGES, "tools": TOOLS}
    headers = KINDS["anthropic"].headers
    async with serve(anthropic_upstream) as (_, url, http):
        async with http.post(url + "/v1/messages", headers=headers, json=chat_to_anthropic(chat)) as resp:
            first = anthropic_to_chat(await resp.json(), model="m", created=1, request_id="a")
        [call] = first["choices"][0]["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"input": "hello fake world"}
        history = [*MESSAGES, first["choices"][0]["message"],
                   {"role": "tool", "tool_call_id": call["id"], "content": "forty two"}]
        translator = AnthropicStreamTranslator("m", 1, "b", include_usage=True)
        parser = SSEParser()
        async with http.post(url + "/v1/messages", headers=headers, json=chat_to_anthropic(
                {**chat, "messages": history, "stream": True})) as resp:
            assert resp.status == 200
            chunks = [c async for data in resp.content.iter_any() for ev in parser.feed(data)
                      for c in translator.feed(ev.event, json_data(ev.data))]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
        "echo: forty two"
    assert translator.finished and chunks[-1]["usage"]["completion_tokens"] == 3


# --------------------------------------------------------------------------------- Ollama


async def test_ollama_model_lifecycle_and_listings() -> None:
    async with serve(ollama_upstream) as (_, url, http):
        async def call(path: str, body: dict[str, Any] | None = None) -> Any:
            request = http.post(url + path, json=body) if body is not None else http.get(url + path)
            async with request as resp:
                raw = await resp.read()
                return json.loads(raw) if resp.content_type != "application/x-ndjson" else \
                    NDJSONParser().feed(raw)

        async def loaded() -> dict[str, str]:
            return {m["name"]: m["expires_at"] for m in (await call("/api/ps"))["models"]}

        h = KINDS["ollama"].headers
        http.headers.update(h)
        assert await loaded() == {}
        [line] = await call("/api/generate", {"model": "qwen2.5:0.5b"})  # streams by default
        assert (line["done"], line["done_reason"]) == (True, "load")
        assert (await call("/api/generate", {"model": "llama3.2:1b", "keep_alive": -1, "stream": False}))[
            "done_reason"] == "load"
        [entry] = [m for m in (await call("/api/ps"))["models"] if m["name"] == "qwen2.5:0.5b"]
        assert entry["size"] == entry["size_vram"] > 0
        assert (await loaded())["llama3.2:1b"].startswith("2318-")
        assert (await call("/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": 0, "stream": False}))[
            "done_reason"] == "unload"
        assert set(await loaded()) == {"llama3.2:1b"}
        assert (await call("/api/chat", {"model": "llama3.2:1b", "messages": [], "keep_alive": "0s",
                                         "stream": False}))["done_reason"] == "unload"
        assert await loaded() == {}
        tags = await call("/api/tags")
        assert [m["name"] for m in tags["models"]] == list(ollama_upstream.DEFAULT_MODELS)
        assert await call("/api/version") == {"version": ollama_upstream.VERSION}
        assert await call("/api/chat", {"model": "nope", "messages": MESSAGES}) == {
            "error": 'model "nope" not found, try pulling it first'}
        assert "error" in await call("/api/generate", {"model": "llama3.2:1b", "keep_alive": "5 min"})
        async with http.get(url + "/") as resp:
            assert await resp.text() == "Ollama is running"


@pytest.mark.parametrize("value,seconds", [(None, 300.0), (10, 10.0), ("10", 10.0), ("1h30m", 5400.0),
                                           ("300ms", 0.3), (-1, -1.0), ("-1m", -60.0), ("0", 0.0)])
def test_ollama_keep_alive_parsing(value: Any, seconds: float) -> None:
    assert ollama_upstream.keep_alive_seconds(value) == pytest.approx(seconds)


# ------------------------------------------------------------------------------------ CLI

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("name", ["openai_upstream", "anthropic_upstream", "ollama_upstream"])
def test_cli_announces_its_port_and_stops_on_sigterm(name: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", f"tests.fakes.{name}", "--port", "0",
                             "--api-key-env", "FAKE_UPSTREAM_KEY", "--fault", "503"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "FAKE_UPSTREAM_KEY": KEY})
    try:
        assert proc.stdout is not None
        word, port = proc.stdout.readline().split()
        assert word == "LISTENING"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/_fake/script", method="POST",
                                         data=json.dumps({"faults": ["500"]}).encode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp) == {"pending_faults": 2}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""OpenAI chat completions / embeddings <-> Ollama native API translation."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import aiohttp
import pytest

from securellm_bridge.errors import InvalidRequest, UpstreamError
from securellm_bridge.providers.ollama_translate import (OllamaStreamTranslator, chat_to_ollama,
                                                         embeddings_to_ollama, ollama_error_to_openai,
                                                         ollama_to_chat, ollama_to_embeddings)
from securellm_bridge.providers.openai_shapes import TokenUsage
from securellm_bridge.providers.sse import NDJSONParser
from tests.fakes import fake_embedding, running
from tests.fakes.behaviour import Behaviour
from tests.fakes.ollama_upstream import make_app


def _req(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], **extra}


# ----------------------------------------------------------------------------- requests


def test_stream_is_always_explicit() -> None:
    assert chat_to_ollama(_req()) == {"model": "llama3.2:1b", "stream": False,
                                      "messages": [{"role": "user", "content": "hi"}]}
    assert chat_to_ollama(_req(stream=True))["stream"] is True


def test_options() -> None:
    out = chat_to_ollama(_req(temperature=1.5, top_p=0.5, seed=3, stop="END", max_tokens=20,
                              presence_penalty=0.1, frequency_penalty=-0.2))
    assert out["options"] == {"temperature": 1.5, "top_p": 0.5, "seed": 3, "stop": ["END"],
                              "num_predict": 20, "presence_penalty": 0.1, "frequency_penalty": -0.2}
    assert chat_to_ollama(_req(max_completion_tokens=5, max_tokens=9))["options"] == {"num_predict": 5}


@pytest.mark.parametrize("response_format,expected", [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
     {"type": "object"}),
])
def test_response_format(response_format: dict[str, Any], expected: Any) -> None:
    assert chat_to_ollama(_req(response_format=response_format))["format"] == expected
    assert "format" not in chat_to_ollama(_req(response_format={"type": "text"}))


def test_messages_with_images_and_roles() -> None:
    out = chat_to_ollama(_req(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is"}, {"type": "text", "text": "this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}}]},
        {"role": "assistant", "content": "a cat"}]))
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is\nthis?", "images": ["/9j/AAAA"]},
        {"role": "assistant", "content": "a cat"}]


def test_tools_and_tool_history() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    out = chat_to_ollama(_req(tools=[tool], tool_choice="auto", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "9C"},
        {"role": "tool", "tool_call_id": "unknown", "content": "?"}]))
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}]
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "9C", "tool_name": "get_weather"},
        {"role": "tool", "content": "?"}]
    assert "tools" not in chat_to_ollama(_req(tools=[tool], tool_choice="none"))


@pytest.mark.parametrize("extra,param", [
    ({"n": 3}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     "tool_choice"),
    ({"temperature": 3}, "temperature"),
    ({"seed": "x"}, "seed"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
])
def test_invalid_requests_name_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_to_ollama(_req(**extra))
    assert err.value.param == param


# ---------------------------------------------------------------------------- responses

DONE = {"model": "llama3.2:1b", "created_at": "2024-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""}, "done_reason": "stop", "done": True,
        "total_duration": 5_000_000, "load_duration": 100, "prompt_eval_count": 26,
        "prompt_eval_duration": 1000, "eval_count": 4, "eval_duration": 2000}


def test_non_streamed_response() -> None:
    resp = {**DONE, "message": {"role": "assistant", "content": "Hello there"}}
    assert ollama_to_chat(resp, model="local", created=5, request_id="r1") == {
        "id": "chatcmpl-r1", "object": "chat.completion", "created": 5, "model": "local",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello there", "refusal": None}}],
        "usage": {"prompt_tokens": 26, "completion_tokens": 4, "total_tokens": 30,
                  "prompt_tokens_details": {"cached_tokens": 0}},
        "system_fingerprint": None}


def test_tool_calls_get_ids_and_json_arguments() -> None:
    resp = {**DONE, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "a", "arguments": {"x": 1}}},
        {"id": "call_given", "function": {"index": 1, "name": "b", "arguments": {}}}]}}
    choice = ollama_to_chat(resp, model="m", created=0, request_id="r1")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_r1_0", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
        {"id": "call_given", "type": "function", "function": {"name": "b", "arguments": "{}"}}]


@pytest.mark.parametrize("reason,finish", [("stop", "stop"), ("length", "length"), ("load", "stop"),
                                           (None, "stop")])
def test_done_reason_mapping(reason: str | None, finish: str) -> None:
    resp = {**DONE, "done_reason": reason}
    assert ollama_to_chat(resp, model="m", created=0, request_id="r")["choices"][0][
        "finish_reason"] == finish


def test_error_object_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="model crashed"):
        ollama_to_chat({"error": "model crashed"}, model="m", created=0, request_id="r")


STREAM = b"".join(json.dumps(o).encode() + b"\n" for o in [
    {"model": "llama3.2:1b", "created_at": "t", "message": {"role": "assistant", "content": "Hel"},
     "done": False},
    {"model": "llama3.2:1b", "created_at": "t", "message": {"role": "assistant", "content": "lo"},
     "done": False},
    {"model": "llama3.2:1b", "created_at": "t", "done": False, "message": {
        "role": "assistant", "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}},
    {**DONE, "done_reason": "length"}])


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-r2", "object": "chat.completion.chunk", "created": 7, "model": "local",
            "system_fingerprint": None, "usage": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_stream_translation_with_usage() -> None:
    translator = OllamaStreamTranslator("local", 7, "r2", include_usage=True)
    parser = NDJSONParser()
    chunks = [c for i in range(0, len(STREAM), 17) for o in parser.feed(STREAM[i:i + 17])
              for c in translator.feed(o)]
    assert chunks == [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_r2_0", "type": "function",
                                "function": {"name": "f", "arguments": '{"a":1}'}}]}),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-r2", "object": "chat.completion.chunk", "created": 7, "model": "local",
         "system_fingerprint": None, "choices": [],
         "usage": {"prompt_tokens": 26, "completion_tokens": 4, "total_tokens": 30,
                   "prompt_tokens_details": {"cached_tokens": 0}}}]
    assert translator.finished and translator.usage == TokenUsage(26, 4)
    assert translator.feed(DONE) == []


def test_stream_length_finish_and_error_line() -> None:
    translator = OllamaStreamTranslator("local", 7, "r2")
    assert translator.usage == TokenUsage()
    *_, last = translator.feed({**DONE, "done_reason": "length"})
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last
    with pytest.raises(UpstreamError, match="unexpected EOF"):
        OllamaStreamTranslator("local", 7, "r2").feed({"error": "unexpected EOF"})


# --------------------------------------------------------------------------- embeddings


def test_embeddings_request() -> None:
    assert embeddings_to_ollama({"model": "nomic", "input": ["a", "b"], "dimensions": 8,
                                 "encoding_format": "base64", "user": "u"}) == {
        "model": "nomic", "input": ["a", "b"], "dimensions": 8}
    bad_inputs: list[dict[str, Any]] = [{"input": [1, 2, 3]}, {"input": []}, {"input": None},
                                        {"input": "x", "encoding_format": "hex"},
                                        {"input": "x", "dimensions": 0}]
    for bad in bad_inputs:
        with pytest.raises(InvalidRequest):
            embeddings_to_ollama({"model": "nomic", **bad})


def test_embeddings_response_float_and_base64() -> None:
    resp = {"model": "nomic", "embeddings": [[0.5, -0.25], [1.0, 0.0]], "prompt_eval_count": 3}
    floats = ollama_to_embeddings(resp, "emb")
    assert floats == {"object": "list", "model": "emb",
                      "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                               {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}],
                      "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    packed = ollama_to_embeddings(resp, "emb", encoding_format="base64")
    decoded = [list(struct.unpack("<2f", base64.b64decode(d["embedding"]))) for d in packed["data"]]
    assert decoded == [[0.5, -0.25], [1.0, 0.0]]
    with pytest.raises(UpstreamError):
        ollama_to_embeddings({"embeddings": [["x"]]}, "emb")


@pytest.mark.parametrize("status,body,client_status,code", [
    (404, b'{"error":"model \\"x\\" not found, try pulling it first"}', 404, "model_not_found"),
    (400, b'{"error":"invalid options"}', 400, "invalid_request"),
    (429, b"{}", 429, "rate_limit_exceeded"),
    (503, b'{"error":"server busy"}', 503, "upstream_overloaded"),
    (401, b'{"error":"unauthorized"}', 502, "upstream_auth_failed"),
    (500, b"garbage", 502, "upstream_error"),
])
def test_error_mapping(status: int, body: bytes, client_status: int, code: str) -> None:
    got, err = ollama_error_to_openai(status, body)
    assert got == client_status and err["error"]["code"] == code
    assert err["error"]["message"].startswith(("upstream", "the upstream"))


# ------------------------------------------------------------- against the faithful fake


@pytest.mark.anyio
async def test_round_trip_through_the_fake_ollama() -> None:
    chat = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello local"}]}
    async with running(make_app(Behaviour())) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/api/chat", json=chat_to_ollama({**chat, "max_tokens": 2})) as resp:
            short = ollama_to_chat(await resp.json(), model="local", created=1, request_id="x")
        assert short["choices"][0]["message"]["content"] == "echo: hello"
        assert short["choices"][0]["finish_reason"] == "length"
        assert short["usage"]["completion_tokens"] == 2
        translator, parser = OllamaStreamTranslator("local", 1, "y", include_usage=True), NDJSONParser()
        async with http.post(url + "/api/chat", json=chat_to_ollama({**chat, "stream": True})) as resp:
            chunks = [c async for data in resp.content.iter_any() for obj in parser.feed(data)
                      for c in translator.feed(obj)]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
            "echo: hello local"
        assert translator.finished and chunks[-1]["usage"]["prompt_tokens"] == 2
        tools = [{"type": "function", "function": {"name": "lookup"}}]
        async with http.post(url + "/api/chat", json=chat_to_ollama({**chat, "tools": tools})) as resp:
            called = ollama_to_chat(await resp.json(), model="local", created=1, request_id="z")
        [call] = called["choices"][0]["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"input": "hello local"}
        assert called["choices"][0]["finish_reason"] == "tool_calls"
        body = embeddings_to_ollama({"model": "nomic-embed-text", "input": ["a", "b"], "dimensions": 4})
        async with http.post(url + "/api/embed", json=body) as resp:
            embedded = ollama_to_embeddings(await resp.json(), "emb", encoding_format="base64")
    vectors = [list(struct.unpack("<4f", base64.b64decode(d["embedding"]))) for d in embedded["data"]]
    assert vectors == [fake_embedding("a", 4), fake_embedding("b", 4)]

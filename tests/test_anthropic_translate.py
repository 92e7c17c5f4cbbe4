"""OpenAI chat completions <-> Anthropic Messages API translation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from securellm_bridge.errors import InvalidRequest, UpstreamError
from securellm_bridge.providers.anthropic_translate import (AnthropicStreamTranslator,
                                                            anthropic_error_to_openai,
                                                            anthropic_to_chat, chat_to_anthropic)
from securellm_bridge.providers.openai_shapes import TokenUsage
from securellm_bridge.providers.sse import SSEParser, json_data

PNG = "iVBORw0KGgo="


def _req(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], **extra}


# ----------------------------------------------------------------------------- requests


def test_minimal_request_gets_default_max_tokens_and_text_blocks() -> None:
    assert chat_to_anthropic(_req(), default_max_tokens=123) == {
        "model": "claude-haiku-4-5", "max_tokens": 123,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_system_and_developer_messages_become_top_level_system() -> None:
    out = chat_to_anthropic(_req(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "use metric units"}]},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": ""},
    ]))
    assert out["system"] == [{"type": "text", "text": "be brief"},
                             {"type": "text", "text": "use metric units"}]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_consecutive_same_role_messages_are_merged() -> None:
    out = chat_to_anthropic(_req(messages=[
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"}, {"role": "assistant", "content": [
            {"type": "text", "text": "d"}, {"type": "refusal", "refusal": "e"}]},
        {"role": "user", "content": "f"}]))
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"},
                                          {"type": "text", "text": "e"}]},
        {"role": "user", "content": [{"type": "text", "text": "f"}]}]


def test_images_from_data_and_https_urls() -> None:
    out = chat_to_anthropic(_req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/PNG;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}}]}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}}]


@pytest.mark.parametrize("url,param", [
    ("data:image/tiff;base64,AAAA", "messages[0].content[0].image_url.url"),
    ("data:image/png,notbase64", "messages[0].content[0].image_url.url"),
    ("file:///etc/passwd", "messages[0].content[0].image_url.url"),
])
def test_bad_images_are_rejected(url: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_to_anthropic(_req(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]))
    assert err.value.param == param


def test_sampling_parameters() -> None:
    out = chat_to_anthropic(_req(max_tokens=50, max_completion_tokens=60, stop="END", temperature=0.2,
                                 top_p=0.9, stream=True, user="user-42",
                                 stream_options={"include_usage": True}))
    assert (out["max_tokens"], out["stop_sequences"], out["temperature"], out["top_p"]) == (
        60, ["END"], 0.2, 0.9)
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "user-42"}
    assert chat_to_anthropic(_req(max_tokens=50, stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert "stream" not in chat_to_anthropic(_req(stream=False))


@pytest.mark.parametrize("extra,param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"seed": 7}, "seed"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"temperature": 1.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"stop": [1]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"user": 5}, "user"),
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
])
def test_unsupported_or_invalid_parameters_name_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_to_anthropic(_req(**extra))
    assert err.value.param == param
    assert param in err.value.message


def test_neutral_values_of_unsupported_parameters_are_accepted() -> None:
    out = chat_to_anthropic(_req(n=1, logprobs=False, presence_penalty=0, logit_bias={},
                                 response_format={"type": "text"}, modalities=["text"]))
    assert set(out) == {"model", "messages", "max_tokens"}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_tool_round_trip_history() -> None:
    out = chat_to_anthropic(_req(tools=[WEATHER, {"type": "function", "function": {"name": "noop"}}],
                                 messages=[
        {"role": "user", "content": "weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9C"}]},
        {"role": "user", "content": "thanks"}]))
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "noop", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in out
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}}]}
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "9C"}]},
        {"type": "text", "text": "thanks"}]}


def test_tool_results_come_first_in_a_merged_user_turn() -> None:
    out = chat_to_anthropic(_req(messages=[
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "user", "content": "before"},
        {"role": "tool", "tool_call_id": "c", "content": ""}]))
    assert out["messages"] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c"},
                                     {"type": "text", "text": "before"}]}]


@pytest.mark.parametrize("choice,parallel,expected", [
    ("required", None, {"type": "any"}),
    ("none", False, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None,
     {"type": "tool", "name": "get_weather"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
])
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    out = chat_to_anthropic(_req(tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel))
    assert out["tool_choice"] == expected


@pytest.mark.parametrize("call,param", [
    ({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
     "messages[0].tool_calls[0].function.arguments"),
    ({"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}},
     "messages[0].tool_calls[0].function.arguments"),
    ({"type": "function", "function": {"name": "f", "arguments": "{}"}}, "messages[0].tool_calls[0].id"),
    ({"id": "c", "type": "function", "function": {"arguments": "{}"}},
     "messages[0].tool_calls[0].function.name"),
])
def test_bad_tool_calls_in_history(call: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_to_anthropic(_req(messages=[{"role": "assistant", "tool_calls": [call]}]))
    assert err.value.param == param


def test_tool_message_needs_its_call_id() -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_to_anthropic(_req(messages=[{"role": "tool", "content": "x"}]))
    assert err.value.param == "messages[0].tool_call_id"


# ---------------------------------------------------------------------------- responses


def test_text_response() -> None:
    resp = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5,
                      "cache_read_input_tokens": 100, "output_tokens": 7}}
    assert anthropic_to_chat(resp, model="my-claude", created=1700, request_id="r1") == {
        "id": "chatcmpl-r1", "object": "chat.completion", "created": 1700, "model": "my-claude",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello world", "refusal": None}}],
        "usage": {"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122,
                  "prompt_tokens_details": {"cached_tokens": 100}},
        "system_fingerprint": None}


def test_tool_use_response() -> None:
    resp = {"content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                         "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}}
    choice = anthropic_to_chat(resp, model="m", created=0, request_id="r")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]


@pytest.mark.parametrize("stop_reason,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    (None, "stop"), ("something_new", "stop")])
def test_finish_reason_mapping(stop_reason: str | None, finish: str) -> None:
    resp: dict[str, Any] = {"content": [], "stop_reason": stop_reason}
    assert anthropic_to_chat(resp, model="m", created=0, request_id="r")["choices"][0][
        "finish_reason"] == finish


def test_malformed_response_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        anthropic_to_chat({"type": "message"}, model="m", created=0, request_id="r")
    with pytest.raises(UpstreamError):
        anthropic_to_chat({"content": [{"type": "tool_use", "input": {}}]}, model="m", created=0,
                          request_id="r")


# ------------------------------------------------------------------------------- streams

# A recorded Messages API stream (text block, then a tool_use block), as bytes on the wire.
RECORDED = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":28,"output_tokens":2,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", checking."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Pa"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-req7", "object": "chat.completion.chunk", "created": 99, "model": "claude",
            "system_fingerprint": None, "usage": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _translate(raw: bytes, translator: AnthropicStreamTranslator) -> list[dict[str, Any]]:
    return [chunk for ev in SSEParser().feed(raw) for chunk in translator.feed(ev.event, json_data(ev.data))]


def test_recorded_stream_translates_to_expected_chunks() -> None:
    translator = AnthropicStreamTranslator("claude", 99, "req7", include_usage=True)
    assert _translate(RECORDED, translator) == [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Okay"}),
        _chunk({"content": ", checking."}),
        _chunk({"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
        _chunk({}, "tool_calls"),
        {"id": "chatcmpl-req7", "object": "chat.completion.chunk", "created": 99, "model": "claude",
         "system_fingerprint": None, "choices": [],
         "usage": {"prompt_tokens": 500, "completion_tokens": 89, "total_tokens": 589,
                   "prompt_tokens_details": {"cached_tokens": 28}}},
    ]
    assert translator.finished
    assert translator.usage == TokenUsage(500, 89, 28)


def test_without_include_usage_chunks_have_no_usage_key() -> None:
    chunks = _translate(RECORDED, AnthropicStreamTranslator("claude", 99, "req7"))
    assert len(chunks) == 7
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)


def test_usage_is_known_as_the_stream_goes() -> None:
    translator = AnthropicStreamTranslator("claude", 99, "req7")
    head, _, _ = RECORDED.partition(b"event: content_block_start")
    _translate(head, translator)
    assert translator.usage == TokenUsage(500, 2, 28)
    assert not translator.finished


def test_error_event_raises_with_the_upstream_type() -> None:
    translator = AnthropicStreamTranslator("claude", 99, "req7")
    translator.feed("message_start", {"type": "message_start", "message": {"usage": {}}})
    with pytest.raises(UpstreamError) as err:
        translator.feed("error", {"type": "error", "error": {"type": "overloaded_error",
                                                             "message": "Overloaded"}})
    assert err.value.code == "overloaded_error"
    assert "Overloaded" in err.value.message


def test_events_before_message_start_are_rejected() -> None:
    with pytest.raises(UpstreamError, match="before message_start"):
        AnthropicStreamTranslator("c", 0, "r").feed("content_block_delta", {
            "index": 0, "delta": {"type": "text_delta", "text": "x"}})


def test_unknown_events_and_deltas_are_ignored() -> None:
    translator = AnthropicStreamTranslator("c", 0, "r")
    translator.feed("message_start", {"message": {}})
    assert translator.feed("some_future_event", {}) == []
    assert translator.feed("content_block_start", {"index": 0, "content_block": {"type": "thinking"}}) == []
    assert translator.feed("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta",
                                                                         "thinking": "x"}}) == []
    with pytest.raises(UpstreamError, match="not a tool_use"):
        translator.feed("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                      "partial_json": "{"}})


def test_stream_without_message_delta_still_finishes() -> None:
    translator = AnthropicStreamTranslator("c", 0, "r")
    translator.feed("message_start", {"message": {}})
    [finish] = translator.feed("message_stop", {})
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert translator.feed("message_stop", {}) == []


# -------------------------------------------------------------------------------- errors


def _anthropic_error(err_type: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": err_type, "message": message},
                       "request_id": "req_1"}).encode()


@pytest.mark.parametrize("status,err_type,client_status,code", [
    (400, "invalid_request_error", 400, "invalid_request"),
    (401, "authentication_error", 502, "upstream_auth_failed"),
    (403, "permission_error", 502, "upstream_permission_denied"),
    (404, "not_found_error", 404, "not_found"),
    (413, "request_too_large", 413, "payload_too_large"),
    (429, "rate_limit_error", 429, "rate_limit_exceeded"),
    (500, "api_error", 502, "upstream_error"),
    (529, "overloaded_error", 503, "upstream_overloaded"),
    (504, "timeout_error", 504, "timeout"),
])
def test_error_mapping(status: int, err_type: str, client_status: int, code: str) -> None:
    got_status, body = anthropic_error_to_openai(status, _anthropic_error(err_type, "detail"))
    assert got_status == client_status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


def test_upstream_credential_errors_do_not_pass_the_upstream_message_on() -> None:
    _, body = anthropic_error_to_openai(401, _anthropic_error("authentication_error", "invalid x-api-key"))
    assert "x-api-key" not in body["error"]["message"]
    assert body["error"]["message"] == "the upstream provider rejected the gateway's credentials"


@pytest.mark.parametrize("status,client_status", [(529, 503), (429, 429), (500, 502), (418, 502),
                                                  (401, 502)])
def test_garbage_error_bodies_map_by_status(status: int, client_status: int) -> None:
    got_status, body = anthropic_error_to_openai(status, b"<html>bad gateway</html>")
    assert got_status == client_status
    assert body["error"]["message"] in (f"upstream returned HTTP {status}",
                                        "the upstream provider rejected the gateway's credentials")

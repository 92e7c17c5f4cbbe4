"""The OpenAI-compatible API end to end: the official openai SDK over real mTLS, through the
real daemon, to fake upstreams that speak the real OpenAI, Anthropic and Ollama protocols."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from .bridge import Bridge, chat, start_bridge
from .upstreams import FakeUpstream

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(make_daemon: Callable[..., Any]) -> Iterator[Bridge]:
    ups = {"openai": FakeUpstream("openai", api_key="sk-upstream-openai-secret"),
           "anthropic": FakeUpstream("anthropic", api_key="sk-ant-upstream-secret"),
           "ollama": FakeUpstream("ollama")}
    try:
        providers = {
            "openai": {"kind": "openai", "base_url": ups["openai"].url + "/v1", "api_key": "${OPENAI_KEY}",
                       "models": ["gpt-4o-mini", "text-embedding-3-small"], "local": False,
                       "cost": {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}},
            "claude": {"kind": "anthropic", "base_url": ups["anthropic"].url, "api_key": "${ANTHROPIC_KEY}",
                       "models": ["claude-sonnet-4-5"]},
            "ollama": {"kind": "ollama", "base_url": ups["ollama"].url,
                      "models": ["llama3.2:1b", "nomic-embed-text:latest"]},
        }
        from .daemon import Daemon

        def make(**kw: Any) -> Daemon:
            return make_daemon(env={"OPENAI_KEY": "sk-upstream-openai-secret", "ANTHROPIC_KEY": "sk-ant-upstream-secret"},
                               **kw)

        bridge = start_bridge(make, providers=providers, upstreams=ups,
                              extra={"router": {"aliases": {"fast": ["ollama/llama3.2:1b", "gpt-4o-mini"]}}})
        yield bridge
    finally:
        for u in ups.values():
            u.stop()


def test_sdk_chat_non_streaming(stack: Bridge) -> None:
    client = stack.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping from sdk"}])
    completion = raw.parse()
    assert completion.choices[0].message.content and "ping from sdk" in completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-securellm-provider"] == "openai"
    assert len(raw.headers["x-request-id"]) == 24
    # The upstream got the gateway's key, never the client's.
    (req,) = stack.upstreams["openai"].requests()
    assert req["body"]["messages"][0]["content"] == "ping from sdk"


def test_sdk_chat_streaming_with_usage(stack: Bridge) -> None:
    client = stack.openai()
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "stream me"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream me" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert not chunks[-1].choices


def test_stream_without_include_usage_hides_usage_chunk(stack: Bridge) -> None:
    client = stack.openai()
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 messages=[{"role": "user", "content": "x"}]))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # ...but the gateway asked the upstream for usage, to account for the tokens.
    body = stack.upstreams["openai"].requests()[-1]["body"]
    assert body["stream_options"] == {"include_usage": True}
    assert 'securellm_tokens_total{model="gpt-4o-mini",provider="openai",type="completion"}' in stack.metrics()


def test_sdk_embeddings_and_models(stack: Bridge) -> None:
    client = stack.openai()
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "llama3.2:1b", "fast"} <= ids


def test_legacy_completions(stack: Bridge) -> None:
    r = stack.post("/v1/completions", {"model": "gpt-4o-mini", "prompt": "complete this"})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"


def test_anthropic_translation_non_stream_and_stream(stack: Bridge) -> None:
    client = stack.openai()
    out = client.chat.completions.create(model="claude-sonnet-4-5", max_tokens=64,
                                         messages=[{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "hi claude"}])
    assert out.object == "chat.completion" and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.completion_tokens > 0
    req = stack.upstreams["anthropic"].requests()[-1]
    assert req["path"] == "/v1/messages" and req["body"]["system"] == [{"type": "text", "text": "be brief"}]
    chunks = list(client.chat.completions.create(model="claude-sonnet-4-5", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "stream claude"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None


def test_ollama_native_chat_stream_and_embeddings(stack: Bridge) -> None:
    client = stack.openai()
    chunks = list(client.chat.completions.create(model="llama3.2:1b", stream=True,
                                                 messages=[{"role": "user", "content": "local please"}]))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert stack.upstreams["ollama"].requests()[-1]["path"] == "/api/chat"
    emb = client.embeddings.create(model="nomic-embed-text:latest", input="vector me")
    assert len(emb.data) == 1
    assert stack.upstreams["ollama"].requests()[-1]["path"] == "/api/embed"


def test_alias_and_strategy_header(stack: Bridge) -> None:
    r = stack.post("/v1/chat/completions", chat("fast"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "ollama"
    r = stack.post("/v1/chat/completions", chat("fast"), headers={"x-securellm-strategy": "cloud-first"})
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "openai"
    assert stack.upstreams["openai"].requests()[-1]["body"]["model"] == "gpt-4o-mini"
    r = stack.post("/v1/chat/completions", chat("fast"), headers={"x-securellm-strategy": "nonsense"})
    assert r.status_code == 400 and "x-securellm-strategy" in r.json()["error"]["message"]
    # A key may carry its own strategy; the header still wins.
    key, _ = stack.new_key("--strategy", "cloud-first")
    assert stack.post("/v1/chat/completions", chat("fast"), key=key).headers["x-securellm-provider"] == "openai"
    r = stack.post("/v1/chat/completions", chat("fast"), key=key, headers={"x-securellm-strategy": "local-first"})
    assert r.headers["x-securellm-provider"] == "ollama"


@pytest.mark.parametrize("case, status, needle", [
    ("no key", 401, "API key is required"),
    ("bad key", 401, "invalid API key"),
    ("unknown model", 404, "does not exist"),
    ("malformed json", 400, "not valid JSON"),
    ("missing messages", 400, "messages"),
    ("bad role", 400, "messages[0].role"),
    ("not object", 400, "JSON object"),
])
def test_client_errors_use_openai_shape(stack: Bridge, case: str, status: int, needle: str) -> None:
    with stack.http() as c:
        if case == "no key":
            r = c.post("/v1/chat/completions", json=chat("gpt-4o-mini"))
        elif case == "bad key":
            r = c.post("/v1/chat/completions", json=chat("gpt-4o-mini"), headers={"Authorization": "Bearer sk-sllm-nope"})
        else:
            body: Any = {"unknown model": chat("no-such-model"), "missing messages": {"model": "gpt-4o-mini"},
                         "bad role": {"model": "gpt-4o-mini", "messages": [{"role": "boss", "content": "x"}]},
                         "not object": [1, 2]}.get(case)
            raw = b"{not json" if case == "malformed json" else None
            r = stack.post("/v1/chat/completions", body, raw=raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]
    assert "Traceback" not in r.text and r.headers["x-request-id"]


def test_key_model_allowlist_is_enforced(stack: Bridge) -> None:
    key, _ = stack.new_key("--models", "gpt-4o-mini")
    assert stack.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key).status_code == 200
    r = stack.post("/v1/chat/completions", chat("claude-sonnet-4-5"), key=key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    ids = [m["id"] for m in stack.get("/v1/models", key=key).json()["data"]]
    assert ids == ["gpt-4o-mini"]


def test_revoked_key_is_refused(stack: Bridge) -> None:
    key, key_id = stack.new_key()
    assert stack.daemon.ctl("keys", "revoke", key_id).returncode == 0
    r = stack.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_x_api_key_header(stack: Bridge) -> None:
    with stack.http() as c:
        r = c.post("/v1/chat/completions", json=chat("gpt-4o-mini"), headers={"x-api-key": stack.key})
    assert r.status_code == 200


def test_oversized_body_413(stack: Bridge) -> None:
    big = chat("gpt-4o-mini", "x" * (11 * 1024 * 1024))
    r = stack.post("/v1/chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["message"]


def test_health_and_metrics(stack: Bridge) -> None:
    with stack.http() as c:
        assert c.get("/health/live").json() == {"status": "ok"}
        assert c.get("/health/ready").status_code == 200
        stack.post("/v1/chat/completions", chat("gpt-4o-mini"))
        provs = c.get("/health/providers").json()["providers"]
        assert provs["openai"]["status"] == "up" and provs["openai"]["circuit"] == "closed"
        assert provs["openai"]["latency_ewma_ms"] is not None
        summary = c.get("/health").json()
        assert summary["status"] == "ok" and summary["providers"]["total"] == 3
        text = c.get("/metrics").text
    for name in ("securellm_requests_total", "securellm_request_duration_seconds_bucket",
                 "securellm_upstream_duration_seconds_bucket", "securellm_tokens_total", "securellm_cost_total",
                 "securellm_in_flight_requests", "securellm_fallbacks_total", "securellm_rate_limit_rejections_total"):
        assert name in text
    assert 'securellm_requests_total{model="gpt-4o-mini",provider="openai",route="chat",status="200"}' in text


def test_upstream_secrets_never_leak(stack: Bridge) -> None:
    stack.post("/v1/chat/completions", chat("gpt-4o-mini"))
    stack.post("/v1/chat/completions", chat("claude-sonnet-4-5", max_tokens=10))
    stack.daemon.stop()
    log = stack.daemon.log()
    for secret in ("sk-upstream-openai-secret", "sk-ant-upstream-secret", stack.key):
        assert secret not in log

"""Failure handling through the real daemon: retries, fallback, circuit breaker, rate limits,
budgets, timeouts, mid-stream resets, malformed upstream JSON and client disconnects."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Iterator

import httpx
import pytest

from .bridge import Bridge, chat, start_bridge
from .upstreams import FakeUpstream

pytestmark = pytest.mark.slow


def _providers(primary: FakeUpstream, backup: FakeUpstream, **primary_extra: Any) -> dict[str, dict[str, Any]]:
    return {
        "primary": {"kind": "openai", "base_url": primary.url + "/v1", "models": ["gpt-4o-mini"], "priority": 1,
                    "max_retries": 1, **primary_extra},
        "backup": {"kind": "openai", "base_url": backup.url + "/v1", "models": ["gpt-4o-mini"], "priority": 2,
                   "max_retries": 0},
    }


@pytest.fixture
def pair(make_daemon: Callable[..., Any]) -> Iterator[Bridge]:
    primary, backup = FakeUpstream("openai"), FakeUpstream("openai")
    try:
        yield start_bridge(make_daemon, providers=_providers(primary, backup),
                           upstreams={"primary": primary, "backup": backup},
                           extra={"router": {"retry_base_delay_seconds": 0.01, "breaker_failure_threshold": 3,
                                             "breaker_reset_seconds": 60}})
    finally:
        primary.stop()
        backup.stop()


def _count(b: Bridge, name: str) -> int:
    return len([r for r in b.upstreams[name].requests() if r["path"].startswith("/v1/")])


def test_retry_then_success_on_same_provider(pair: Bridge) -> None:
    pair.upstreams["primary"].script("500")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "primary"
    assert _count(pair, "primary") == 2 and _count(pair, "backup") == 0
    assert "securellm_retries_total{provider=\"primary\"} 1.0" in pair.metrics()


def test_fallback_order_after_retries(pair: Bridge) -> None:
    pair.upstreams["primary"].script("503", "502")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "backup"
    assert _count(pair, "primary") == 2 and _count(pair, "backup") == 1
    assert 'securellm_fallbacks_total{route="chat"} 1.0' in pair.metrics()


def test_429_retry_after_is_respected(pair: Bridge) -> None:
    pair.upstreams["primary"].script("429:0.4")
    t0 = time.monotonic()
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "primary"
    assert time.monotonic() - t0 >= 0.4  # it waited as told, instead of hammering the upstream


def test_long_retry_after_falls_back_instead_of_waiting(pair: Bridge) -> None:
    pair.upstreams["primary"].script("429:3600")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "backup"
    assert _count(pair, "primary") == 1


def test_non_retryable_4xx_is_passed_on_without_fallback(pair: Bridge) -> None:
    pair.upstreams["primary"].script("400")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("upstream")
    assert _count(pair, "backup") == 0


def test_malformed_upstream_json_falls_back(pair: Bridge) -> None:
    pair.upstreams["primary"].script("malformed", "malformed")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "backup"


def test_all_fail_gives_clean_502(pair: Bridge) -> None:
    pair.upstreams["primary"].script("500", "500")
    pair.upstreams["backup"].script("500")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 502
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_circuit_breaker_opens_and_skips_provider(pair: Bridge) -> None:
    pair.upstreams["primary"].script(*["500"] * 4)
    for _ in range(2):  # 2 requests x 2 attempts: the 3rd consecutive failure opens the circuit
        assert pair.post("/v1/chat/completions", chat("gpt-4o-mini")).status_code == 200
    with pair.http() as c:
        health = c.get("/health/providers").json()["providers"]["primary"]
    assert health["circuit"] == "open" and health["status"] == "down"
    before = _count(pair, "primary")
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "backup"
    assert _count(pair, "primary") == before  # not even tried


def test_mid_stream_reset_ends_stream_with_error_and_no_retry(pair: Bridge) -> None:
    pair.upstreams["primary"].script("reset_after:2")
    with pair.http() as c, c.stream("POST", "/v1/chat/completions",
                                    json=chat("gpt-4o-mini", "a long answer please", stream=True),
                                    headers={"Authorization": f"Bearer {pair.key}"}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2
    last = json.loads(events[-1][6:])
    assert "error" in last and set(last["error"]) == {"message", "type", "param", "code"}
    assert _count(pair, "primary") == 1 and _count(pair, "backup") == 0


def test_stream_fails_before_first_byte_falls_back(pair: Bridge) -> None:
    pair.upstreams["primary"].script("reset", "reset")
    with pair.http() as c:
        r = c.post("/v1/chat/completions", json=chat("gpt-4o-mini", stream=True),
                   headers={"Authorization": f"Bearer {pair.key}"})
    assert r.status_code == 200 and r.headers["x-securellm-provider"] == "backup"
    assert r.text.rstrip().endswith("data: [DONE]")


def test_key_rate_limit_429_with_retry_after(pair: Bridge) -> None:
    key, _ = pair.new_key("--rpm", "1")
    assert pair.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key).status_code == 200
    r = pair.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert 'securellm_rate_limit_rejections_total{scope="rate"} 1.0' in pair.metrics()
    # Another key is not affected.
    assert pair.post("/v1/chat/completions", chat("gpt-4o-mini")).status_code == 200


def test_budget_exhaustion_429(make_daemon: Callable[..., Any]) -> None:
    up = FakeUpstream("openai")
    try:
        b = start_bridge(make_daemon, upstreams={"p": up}, providers={
            "p": {"kind": "openai", "base_url": up.url + "/v1", "models": ["gpt-4o-mini"],
                  "cost": {"gpt-4o-mini": {"input_per_mtok": 1000000.0, "output_per_mtok": 1000000.0}}}})
        key, _ = b.new_key("--max-budget", "1", "--budget-period", "day")
        assert b.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key).status_code == 200
        r = b.post("/v1/chat/completions", chat("gpt-4o-mini"), key=key)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "budget" in r.json()["error"]["message"]
    finally:
        up.stop()


def test_request_timeout_504(make_daemon: Callable[..., Any]) -> None:
    up = FakeUpstream("openai")
    try:
        b = start_bridge(make_daemon, upstreams={"p": up},
                         providers={"p": {"kind": "openai", "base_url": up.url + "/v1", "models": ["gpt-4o-mini"]}},
                         extra={"limits": {"request_timeout_seconds": 1.0}})
        up.script("timeout")
        r = b.post("/v1/chat/completions", chat("gpt-4o-mini"))
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    finally:
        up.stop()


def test_request_timeout_mid_stream_ends_stream_with_timeout_event(make_daemon: Callable[..., Any]) -> None:
    """The request timeout fires after the first bytes went out: the stream ends with an
    error event (no second response, no retry) and the daemon keeps serving."""
    up = FakeUpstream("openai")
    try:
        b = start_bridge(make_daemon, upstreams={"p": up},
                         providers={"p": {"kind": "openai", "base_url": up.url + "/v1", "models": ["gpt-4o-mini"]}},
                         extra={"limits": {"request_timeout_seconds": 1.0}})
        up.script("stall_after:2")
        with b.http() as c, c.stream("POST", "/v1/chat/completions", json=chat("gpt-4o-mini", "hi", stream=True),
                                     headers={"Authorization": f"Bearer {b.key}"}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert len(events) >= 2
        last = json.loads(events[-1][6:])
        assert last["error"]["type"] == "timeout_error"
        assert b.post("/v1/chat/completions", chat("gpt-4o-mini")).status_code == 200
    finally:
        up.stop()


class _SilentUpstream:
    """Accepts one HTTP request and never answers; records when the gateway hangs up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.got_request = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.closed.set()
                    return
                self.got_request.set()
        except OSError:
            self.closed.set()


def test_client_disconnect_cancels_upstream(make_daemon: Callable[..., Any]) -> None:
    silent = _SilentUpstream()
    b = start_bridge(make_daemon, upstreams={}, providers={
        "p": {"kind": "openai", "base_url": f"http://127.0.0.1:{silent.port}/v1", "models": ["m"]}})
    with b.http(timeout=1.0) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chat/completions", json=chat("m"), headers={"Authorization": f"Bearer {b.key}"})
    assert silent.got_request.wait(5)
    assert silent.closed.wait(10), "the gateway kept the upstream request open after the client left"
    deadline = time.monotonic() + 5
    while "securellm_in_flight_requests 0.0" not in b.metrics():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert 'status="499"' in b.metrics()

"""Request limits through the real daemon: concurrency cap, header size, unknown routes."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import ssl
import time
from typing import Any, Callable

import pytest

from .bridge import chat, client_ssl, https_address, start_bridge
from .upstreams import FakeUpstream

pytestmark = pytest.mark.slow


def test_concurrency_cap_503_with_retry_after(make_daemon: Callable[..., Any]) -> None:
    up = FakeUpstream("openai")
    try:
        b = start_bridge(make_daemon, upstreams={"p": up},
                         providers={"p": {"kind": "openai", "base_url": up.url + "/v1", "models": ["gpt-4o-mini"]}},
                         extra={"limits": {"max_concurrent_requests": 1}})
        up._call("POST", "/_fake/script", {"faults": [], "delay": 1.5})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(b.post, "/v1/chat/completions", chat("gpt-4o-mini"))
            time.sleep(0.5)
            second = b.post("/v1/chat/completions", chat("gpt-4o-mini"))
            assert first.result().status_code == 200
        assert second.status_code == 503 and second.headers["Retry-After"] == "1"
        assert second.json()["error"]["message"].startswith("the gateway is at capacity")
    finally:
        up.stop()


def _raw(b: Any, request: bytes) -> tuple[int, bytes]:
    d = b.daemon
    host, port = https_address(d).rsplit(":", 1)
    ctx: ssl.SSLContext = client_ssl(d, d.certs.client_cert, d.certs.client_key)
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n")[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":")[1])
    return 0


def test_oversized_header_and_unknown_route_use_openai_error_shape(make_daemon: Callable[..., Any]) -> None:
    b = start_bridge(make_daemon, upstreams={}, providers={})
    status, body = _raw(b, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status in (400, 431)
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, body = _raw(b, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, body = _raw(b, b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"

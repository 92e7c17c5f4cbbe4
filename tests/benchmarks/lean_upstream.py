"""A zero-delay OpenAI chat-completions upstream, lean enough never to be the bottleneck.

It speaks the real protocol on the wire: HTTP/1.1 with keep-alive, ``POST
/v1/chat/completions`` with a JSON body, answered with a ``chat.completion`` object
(``Content-Length``) or, for ``"stream": true``, ``chat.completion.chunk`` Server-Sent Events
in ``Transfer-Encoding: chunked`` (one HTTP chunk per event, as OpenAI sends them), with the
usage chunk when ``stream_options.include_usage`` asks for it, then ``data: [DONE]``.

Unlike ``tests.fakes.openai_upstream`` (aiohttp, fault scripting, request recording, echo
replies) it is a bare :class:`asyncio.Protocol` on uvloop that parses just enough HTTP and
serves a fixed reply per (model, stream, include_usage), so a proxy in front of it is
measured, not the fake.

    python -m tests.benchmarks.lean_upstream --port 0 [--tls-dir CERTS --tls-port 0]

prints ``LISTENING <port> [<tls port>]``. The optional TLS listener (server certificate and
client-CA from a ``securellmctl certs init`` directory, client certificate required) lets the
benchmark show what its load generator can do over mTLS with no proxy in the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import time
from pathlib import Path

PATH = b"/v1/chat/completions"
REPLY_PIECES = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")
PROMPT_TOKENS = 24


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _usage() -> dict[str, object]:
    completion = len(REPLY_PIECES)
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def completion_body(model: str) -> bytes:
    return _dumps({"id": "chatcmpl-bench0001", "object": "chat.completion", "created": int(time.time()),
                   "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_PIECES),
                                                        "refusal": None, "annotations": []},
                                "logprobs": None, "finish_reason": "stop"}],
                   "usage": _usage(), "service_tier": "default", "system_fingerprint": "fp_bench01"})


def stream_events(model: str, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "service_tier": "default", "system_fingerprint": "fp_bench01"}
    extra = {"usage": None} if include_usage else {}

    def event(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + _dumps({**base, "choices": [choice], **extra}) + b"\n\n"

    events = [event({"role": "assistant", "content": "", "refusal": None})]
    events += [event({"content": piece}) for piece in REPLY_PIECES]
    events.append(event({}, "stop"))
    if include_usage:
        events.append(b"data: " + _dumps({**base, "choices": [], "usage": _usage()}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _http(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def _json_answer(status: str, body: bytes) -> bytes:
    return _http(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                          ("x-request-id", "req_bench")], body)


def _error(status: str, message: str) -> bytes:
    return _json_answer(status, _dumps({"error": {"message": message, "type": "invalid_request_error",
                                                  "param": None, "code": None}}))


class Answers:
    """Whole HTTP responses, built once per (model, stream, include_usage)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool, bool], bytes] = {}

    def get(self, model: str, stream: bool, include_usage: bool) -> bytes:
        key = (model, stream, include_usage)
        answer = self._cache.get(key)
        if answer is None:
            if stream:
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in stream_events(model, include_usage))
                answer = _http("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                          ("Transfer-Encoding", "chunked"), ("Cache-Control", "no-cache"),
                                          ("x-request-id", "req_bench")], chunks + b"0\r\n\r\n")
            else:
                answer = _json_answer("200 OK", completion_body(model))
            if len(self._cache) < 64:
                self._cache[key] = answer
        return answer


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests must carry ``Content-Length``."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:
                self._reply(_error("411 Length Required", "send Content-Length"), close=True)
                return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self._reply(self._answer(head, body), close=b"\r\nconnection: close" in head)

    def _reply(self, answer: bytes, *, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        if close:
            self.transport.close()

    def _answer(self, head: bytes, body: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0]
        if path != PATH:
            return _error("404 Not Found", "unknown path")
        if method != b"post":
            return _error("405 Method Not Allowed", "use POST")
        try:
            req = json.loads(body)
            model = req["model"]
            messages = req["messages"]
        except (ValueError, KeyError, TypeError):
            return _error("400 Bad Request", "expected a chat completion request")
        if not isinstance(model, str) or not isinstance(messages, list) or not messages:
            return _error("400 Bad Request", "model and messages are required")
        opts = req.get("stream_options")
        usage = isinstance(opts, dict) and opts.get("include_usage") is True
        return self.answers.get(model, req.get("stream") is True, usage)


def server_context(cert_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_dir / "server.crt"), str(cert_dir / "server.key"))
    ctx.load_verify_locations(cafile=str(cert_dir / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(host: str, port: int, tls_dir: Path | None, tls_port: int) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = [await loop.create_server(lambda: UpstreamProtocol(answers), host, port, backlog=1024)]
    if tls_dir is not None:
        servers.append(await loop.create_server(lambda: UpstreamProtocol(answers), host, tls_port, backlog=1024,
                                                ssl=server_context(tls_dir)))
    ports = " ".join(str(s.sockets[0].getsockname()[1]) for s in servers)
    sys.stdout.write(f"LISTENING {ports}\n")
    sys.stdout.flush()
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-dir", type=Path, help="a `securellmctl certs init` directory: also serve mTLS")
    p.add_argument("--tls-port", type=int, default=0)
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port, args.tls_dir, args.tls_port))


if __name__ == "__main__":
    main()

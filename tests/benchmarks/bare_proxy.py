"""The reference: the least an aiohttp mTLS proxy in front of an OpenAI upstream must do.

It terminates mutual TLS with the same certificates as the bridge (a ``securellmctl certs
init`` directory: server certificate, client certificate required and verified against the
CA), reads and parses the JSON body, forwards the client's bytes through one pooled
``aiohttp.ClientSession`` and returns the upstream's answer: whole for a plain request,
chunk by chunk (``iter_any``) for ``"stream": true``. On uvloop, like the daemon. No API
keys, limits, metrics, accounting, routing or SSE re-framing: what the bridge does beyond
this is its overhead.

    python -m tests.benchmarks.bare_proxy --upstream http://127.0.0.1:PORT/v1 --tls-dir CERTS [--port 0]

prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from .lean_upstream import server_context

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
UPSTREAM_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


def make_app(upstream: str, max_connections: int) -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    url = upstream.rstrip("/") + "/chat/completions"
    session: aiohttp.ClientSession | None = None

    async def on_startup(_: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections),
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
                                        skip_auto_headers=("User-Agent",))

    async def on_cleanup(_: web.Application) -> None:
        if session is not None:
            await session.close()

    async def chat(request: web.Request) -> web.StreamResponse:
        assert session is not None
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        upstream_resp = await session.post(url, data=raw, headers=UPSTREAM_HEADERS)
        try:
            if isinstance(body, dict) and body.get("stream") is True and upstream_resp.status == 200:
                resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
                await resp.prepare(request)
                async for chunk in upstream_resp.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            data = await upstream_resp.read()
            return web.Response(status=upstream_resp.status, body=data, content_type="application/json")
        finally:
            upstream_resp.release()

    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(args.upstream, args.max_connections), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=server_context(args.tls_dir), backlog=1024)
    await site.start()
    sys.stdout.write(f"LISTENING {runner.addresses[0][1]}\n")
    sys.stdout.flush()
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--tls-dir", type=Path, required=True, help="a `securellmctl certs init` directory")
    p.add_argument("--max-connections", type=int, default=64, help="upstream pool size (the bridge's default)")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()

"""The HTTP routes. Inference routes go through the pipeline; the rest are read-only views.

Access: every endpoint sits behind the TLS handshake, so with ``require_client_cert`` every
caller has a valid client certificate. ``/v1/*`` also needs an API key (when
``[security.auth] require_api_key``); ``/health*`` and ``/metrics`` do not, so that probes and
scrapers need only a certificate.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..errors import BridgeError
from ..local.views import vram_json
from .errors import error_response
from .principal import authenticate

if TYPE_CHECKING:
    from ..runtime import Runtime


def build_app(rt: "Runtime", max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, handler_args={"max_field_size": 16384})
    pipeline = rt.pipeline

    async def chat(request: web.Request) -> web.StreamResponse:
        return await pipeline.handle(request, "chat")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await pipeline.handle(request, "completions")

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await pipeline.handle(request, "embeddings")

    async def models(request: web.Request) -> web.StreamResponse:
        try:
            principal = authenticate(request, rt.keys, rt.config.security.auth.require_api_key)
        except BridgeError as exc:
            return error_response(exc, {})
        key = principal.key
        data = [{"id": m, "object": "model", "created": 0, "owned_by": owner}
                for m, owner in rt.router.models() if key is None or key.allows_model(m)]
        return web.json_response({"object": "list", "data": data})

    async def live(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.StreamResponse:
        ok = rt.state == "ready" and not rt.draining
        return web.json_response({"status": "ready" if ok else rt.state}, status=200 if ok else 503)

    async def providers(request: web.Request) -> web.StreamResponse:
        return web.json_response({"providers": provider_health(rt)})

    async def summary(request: web.Request) -> web.StreamResponse:
        provs = provider_health(rt)
        ok = rt.state == "ready" and not rt.draining
        up = sum(1 for p in provs.values() if p["status"] != "down")
        status = "ok" if ok and (up or not provs) else ("degraded" if ok else rt.state)
        body = {"status": status, "state": rt.state, "in_flight": rt.pipeline.in_flight,
                "providers": {"total": len(provs), "up": up}}
        return web.json_response(body, status=200 if ok else 503)

    async def vram(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(vram_json(rt.local))
        except BridgeError as exc:
            return error_response(exc, {})

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def not_found(request: web.Request) -> web.StreamResponse:
        allowed = methods.get(request.path)
        status, code = (405, "method_not_allowed") if allowed else (404, "not_found")
        body = {"error": {"message": f"no route for {request.method} {request.path}", "type": "invalid_request_error",
                          "param": None, "code": code}}
        return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                            headers={"Allow": allowed} if allowed else None)

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health/providers", providers)
    app.router.add_get("/health/vram", vram)
    app.router.add_get("/health", summary)
    app.router.add_get("/metrics", metrics)
    methods = {r.resource.canonical: r.method for r in app.router.routes() if r.resource is not None}
    app.router.add_route("*", "/{tail:.*}", not_found)
    app.middlewares.append(_http_errors)
    return app


@web.middleware
async def _http_errors(request: web.Request, handler: object) -> web.StreamResponse:
    """aiohttp's own HTTP errors (405, 413, ...) in the OpenAI error shape."""
    try:
        return await handler(request)  # type: ignore[operator]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": {"message": exc.reason, "type": "invalid_request_error", "param": None,
                          "code": f"http_{exc.status}"}}
        return web.Response(status=exc.status, text=json.dumps(body), content_type="application/json",
                            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})


def provider_health(rt: "Runtime") -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, stats in rt.router.stats.items():
        ewma = stats.latency_ewma
        out[name] = {"status": stats.status, "circuit": stats.breaker.state,
                     "latency_ewma_ms": None if ewma is None else round(ewma * 1000, 3),
                     "requests": stats.requests, "failures": stats.failures,
                     "consecutive_failures": stats.breaker.failures}
    return out

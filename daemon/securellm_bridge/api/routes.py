"""The HTTP routes. Inference routes go through the pipeline; the rest are read-only views.

Access: every endpoint sits behind the TLS handshake, so with ``require_client_cert`` every
caller has a valid client certificate. ``/v1/*`` also needs an API key (when
``[security.auth] require_api_key``); ``/health*`` and ``/metrics`` do not, so that probes and
scrapers need only a certificate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..errors import BridgeError
from ..local.views import vram_json
from .errors import error_body, error_response
from .principal import authenticate

if TYPE_CHECKING:
    from ..runtime import Runtime


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def build_handler(rt: "Runtime") -> Handler:
    """One coroutine for aiohttp's low-level server: a dict lookup on (method, path) instead of
    an ``Application`` with its URL dispatcher and middleware chain (~20 µs per request less on
    the hot path; docs/PERFORMANCE.md)."""
    pipeline = rt.pipeline

    async def chat(request: web.BaseRequest) -> web.StreamResponse:
        return await pipeline.handle(request, "chat")

    async def completions(request: web.BaseRequest) -> web.StreamResponse:
        return await pipeline.handle(request, "completions")

    async def embeddings(request: web.BaseRequest) -> web.StreamResponse:
        return await pipeline.handle(request, "embeddings")

    async def models(request: web.BaseRequest) -> web.StreamResponse:
        try:
            principal = authenticate(request, rt.keys, rt.config.security.auth.require_api_key)
        except BridgeError as exc:
            return error_response(exc, {})
        key = principal.key
        data = [{"id": m, "object": "model", "created": 0, "owned_by": owner}
                for m, owner in rt.router.models() if key is None or key.allows_model(m)]
        return web.json_response({"object": "list", "data": data})

    async def live(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def ready(request: web.BaseRequest) -> web.StreamResponse:
        ok = rt.state == "ready" and not rt.draining
        return web.json_response({"status": "ready" if ok else rt.state}, status=200 if ok else 503)

    async def providers(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"providers": provider_health(rt)})

    async def summary(request: web.BaseRequest) -> web.StreamResponse:
        provs = provider_health(rt)
        ok = rt.state == "ready" and not rt.draining
        up = sum(1 for p in provs.values() if p["status"] != "down")
        status = "ok" if ok and (up or not provs) else ("degraded" if ok else rt.state)
        body = {"status": status, "state": rt.state, "in_flight": rt.pipeline.in_flight,
                "providers": {"total": len(provs), "up": up}}
        return web.json_response(body, status=200 if ok else 503)

    async def vram(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return web.json_response(vram_json(rt.local))
        except BridgeError as exc:
            return error_response(exc, {})

    async def metrics(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    posts: dict[str, Handler] = {"/v1/chat/completions": chat, "/v1/completions": completions,
                                 "/v1/embeddings": embeddings}
    gets: dict[str, Handler] = {"/v1/models": models, "/health/live": live, "/health/ready": ready,
                                "/health/providers": providers, "/health/vram": vram, "/health": summary,
                                "/metrics": metrics}
    table = {"POST": posts, "GET": gets, "HEAD": gets}
    allowed = {**{path: "POST" for path in posts}, **{path: "GET,HEAD" for path in gets}}

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        handler = table.get(request.method, {}).get(request.path)
        if handler is not None:
            return await handler(request)
        allow = allowed.get(request.path)
        status, code = (405, "method_not_allowed") if allow else (404, "not_found")
        body = error_body(f"no route for {request.method} {request.path}", "invalid_request_error", code)
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={"Allow": allow} if allow else None)

    return dispatch


def provider_health(rt: "Runtime") -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, stats in rt.router.stats.items():
        ewma = stats.latency_ewma
        out[name] = {"status": stats.status, "circuit": stats.breaker.state,
                     "latency_ewma_ms": None if ewma is None else round(ewma * 1000, 3),
                     "requests": stats.requests, "failures": stats.failures,
                     "consecutive_failures": stats.breaker.failures}
    return out

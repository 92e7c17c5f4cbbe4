"""The request path, top to bottom.

    read body → validate → authenticate → authorize → budget & rate limit → DLP → injection
    screen → route → call upstream with retry & fallback → respond or stream → account → audit → metrics

Every stage raises a :class:`BridgeError`; ``handle`` turns it into the OpenAI error shape
in one place (``api/errors.py``). Streams are accounted when they end, however they end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import metrics
from .api import validate
from .api.errors import error_response, internal_error, status_and_body
from .api.principal import Principal, authenticate, authorize, client_subject
from .audit import RequestAudit
from .config.schema import Config
from .errors import (AuthenticationFailed, BridgeError, InvalidRequest, PayloadTooLarge, RateLimited, Unavailable,
                     UpstreamTimeout)
from .providers.base import Call, Route, UpstreamFailure, UpstreamStream
from .providers.openai_shapes import TokenUsage, include_usage, max_tokens
from .providers.sse import SSE_DONE
from .router.pricing import cost
from .router.router import Candidate, Outcome, Router
from .security import dlp, injection
from .security.ratelimit import Reservation, estimate_prompt_tokens

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)
STRATEGY_HEADER = "x-securellm-strategy"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Exchange:
    """What one request accumulates on its way, for the response, accounting and audit."""

    request_id: str
    route: Route
    started: float
    principal: Principal | None = None
    model: str = "unknown"
    provider: str = "none"
    status: int = 0
    usage: TokenUsage = TokenUsage()
    cost: float = 0.0
    outcome: Outcome | None = None
    redactions: int = 0
    injection_rules: tuple[str, ...] = ()
    error_code: str | None = None
    redacted_types: tuple[str, ...] = ()
    client_subject: str | None = None
    prompt: str | None = None
    response: str | None = None
    timed_out: bool = False

    def headers(self) -> dict[str, str]:
        return {"x-request-id": self.request_id, "x-securellm-provider": self.provider}


class Pipeline:
    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime
        self.in_flight = 0
        metrics.in_flight_from(lambda: self.in_flight)

    async def handle(self, request: web.BaseRequest, route: Route) -> web.StreamResponse:
        ex = Exchange(os.urandom(12).hex(), route, time.monotonic())
        cfg = self.rt.config
        if self.in_flight >= cfg.limits.max_concurrent_requests or self.rt.draining:
            return self._finish(ex, error_response(Unavailable("the gateway is at capacity; retry shortly",
                                                               retry_after=1), ex.headers()))
        self.in_flight += 1
        # The request timeout: what asyncio.timeout() does (cancel the task, then tell that
        # cancellation from the client's by the task's cancel count), at half its cost.
        task = asyncio.current_task()
        assert task is not None
        timer = asyncio.get_running_loop().call_later(cfg.limits.request_timeout_seconds, _expire, ex, task)
        try:
            return await self._serve(request, ex, cfg)
        except BridgeError as exc:
            ex.error_code = exc.code
            self._on_rejected(ex, exc, request)
            return self._finish(ex, error_response(exc, ex.headers()))
        except asyncio.CancelledError:
            if ex.timed_out and task.uncancel() == 0:
                return self._finish(ex, error_response(UpstreamTimeout("the request timed out"), ex.headers()))
            ex.status = 499  # the client went away; the upstream call was cancelled with us
            self._account(ex)
            raise
        except Exception:
            log.exception("request %s failed", ex.request_id)
            return self._finish(ex, internal_error(ex.headers()))
        finally:
            timer.cancel()
            self.in_flight -= 1

    async def _serve(self, request: web.BaseRequest, ex: Exchange, cfg: Config) -> web.StreamResponse:
        raw = await _read_body(request, cfg.limits.max_body_bytes)
        body = validate.parse(raw)
        validate.check(ex.route, body)
        ex.principal = principal = authenticate(request, self.rt.keys, cfg.security.auth.require_api_key)
        ex.client_subject = principal.cert_subject
        model = body["model"]
        router: Router = self.rt.router
        ex.model = model if router.knows(model) else "unknown"
        authorize(principal, model)
        if principal.key is not None:
            if not self.rt.usage.is_primed(principal.key):
                await self.rt.usage.prime(principal.key)  # once per key and budget period
            self.rt.usage.check_budget(principal.key)
        max_out = max_tokens(body)
        est_prompt = estimate_prompt_tokens(body)
        est = est_prompt + (max_out or 0)  # what the rate limits reserve, corrected by the usage later
        reservation = self.rt.limiter.admit(principal.key, est)
        passthrough: bytes | None = raw
        try:
            if self._protect(ex, body, principal, cfg):
                passthrough = None  # the body was redacted: it must be re-serialized for the upstream
        except BaseException:
            reservation.settle(0)
            raise
        audit_cfg = cfg.security.audit
        if audit_cfg.log_requests:
            ex.prompt = json.dumps(body.get("messages") or body.get("prompt") or body.get("input"))
        strategy = self._strategy(request, cfg, principal)
        candidates = router.candidates(model, ex.route, strategy, est_prompt, max_out)
        stream = bool(body.get("stream"))
        call = Call(ex.request_id, ex.route, model, body, passthrough, stream, include_usage(body), int(time.time()))

        def attempt_call(c: Candidate) -> Call:
            if c.model == model:
                return call
            return Call(call.request_id, call.route, c.model, body, None, stream, call.include_usage, call.created)

        try:
            if stream:
                return await self._stream(request, ex, router, candidates, attempt_call, est, reservation)
            reply, ex.outcome = await router.run(
                candidates, lambda c: c.provider.complete(attempt_call(c)), self.rt.limiter.admit_provider, est)
            self._settle(ex, reply.usage, reservation)
            ex.status = reply.status
            if audit_cfg.log_responses:
                ex.response = reply.body.decode("utf-8", "replace")
            return self._finish(ex, web.Response(status=reply.status, body=reply.body,
                                                 content_type="application/json", headers=ex.headers()))
        except BaseException:
            reservation.settle(0)
            raise

    async def _stream(self, request: web.BaseRequest, ex: Exchange, router: Router, candidates: list[Candidate],
                      attempt_call: Any, est: int, reservation: Reservation) -> web.StreamResponse:
        async def open_and_peek(c: Candidate) -> tuple[UpstreamStream, Any, bytes]:
            # Retry and fallback stay possible until the first byte: peek it before answering.
            upstream = await c.provider.open_stream(attempt_call(c))
            it = upstream.__aiter__()
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                await upstream.aclose()
                raise UpstreamFailure(f"{c.provider.name}: upstream stream was empty", retryable=True) from None
            except BaseException:
                await upstream.aclose()
                raise
            return upstream, it, first

        (upstream, it, first), ex.outcome = await router.run(
            candidates, open_and_peek, self.rt.limiter.admit_provider, est)
        ex.provider = ex.outcome.candidate.provider.name
        resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, **ex.headers()})
        ex.status = 200
        ended = False
        try:
            # The chunk that ends in ``data: [DONE]`` goes out with the chunked-encoding
            # terminator (and, when it is the first, with the headers) in one TLS write.
            await resp.prepare(request)
            if first.endswith(SSE_DONE):
                ended = True
                await resp.write_eof(first)
            else:
                await resp.write(first)
            async for chunk in it:
                if ended:
                    continue  # nothing is meaningful after [DONE]; read on so the connection is reused
                if chunk.endswith(SSE_DONE):
                    ended = True
                    await resp.write_eof(chunk)
                else:
                    await resp.write(chunk)
        except (BridgeError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):  # the request timeout, or the client left
                task = asyncio.current_task()
                timed_out, ex.timed_out = ex.timed_out, False
                if not timed_out or task is None or task.uncancel():
                    raise
            # Bytes already reached the client: never retry; end the stream with an error event.
            failure = exc if isinstance(exc, BridgeError) else UpstreamTimeout("the request timed out")
            ex.status, body = status_and_body(failure)
            ex.error_code = failure.code
            log.warning("stream %s failed after the first byte: %s", ex.request_id, failure.message)
            if not ended:
                await resp.write(b"data: " + body + b"\n\n")
        finally:
            await upstream.aclose()
            self._settle(ex, upstream.usage, reservation)
        await resp.write_eof()
        self._finish(ex, resp)
        return resp

    def _protect(self, ex: Exchange, body: dict[str, Any], principal: Principal, cfg: Config) -> bool:
        """DLP then injection screening; returns whether the body was modified."""
        key = principal.key
        mode = (key.dlp_mode if key is not None and key.dlp_mode else None) or cfg.security.dlp.mode
        modified = False
        if mode != "off":
            found = dlp.apply(body, mode)  # type: ignore[arg-type]
            if found.counts:
                ex.redactions = sum(found.counts.values())
                ex.redacted_types = tuple(f"{kind}:{n}" for kind, n in sorted(found.counts.items()))
                metrics.count_redactions(found.counts)
                if found.blocked:
                    self.rt.audit.security("dlp_blocked", request_id=ex.request_id, route=ex.route,
                                           key_id=principal.key_id, detectors=sorted(found.counts))
                    raise dlp.blocked_error(found)
                modified = True
        if cfg.security.injection.mode != "off":
            screened = injection.apply(body, cfg.security.injection.mode)
            if screened.flags:
                ex.injection_rules = tuple(sorted({f.rule for f in screened.flags}))
                metrics.count_injection(screened.flags)
                log.warning("request %s matches prompt-injection rules: %s", ex.request_id,
                            ", ".join(ex.injection_rules))
                self.rt.audit.security("injection_flagged", request_id=ex.request_id, route=ex.route,
                                       key_id=principal.key_id, score=len(screened.flags),
                                       action="block" if screened.blocked else "flag",
                                       rules=list(ex.injection_rules))
                if screened.blocked:
                    raise injection.blocked_error(screened)
        return modified

    def _strategy(self, request: web.BaseRequest, cfg: Config, principal: Principal) -> Any:
        """The header's choice (among the allowed ones), else the key's, else the default."""
        wanted = request.headers.get(STRATEGY_HEADER)
        if wanted is None:
            key = principal.key
            return key.strategy if key is not None and key.strategy else cfg.router.default_strategy
        if wanted not in cfg.router.allowed_strategies:
            raise InvalidRequest(f"{STRATEGY_HEADER}: {wanted!r} is not one of the allowed strategies "
                                 f"({', '.join(cfg.router.allowed_strategies)})", param=STRATEGY_HEADER)
        return wanted

    def _settle(self, ex: Exchange, usage: TokenUsage, reservation: Reservation) -> None:
        ex.usage = usage
        outcome = ex.outcome
        if outcome is None:
            return
        cand = outcome.candidate
        ex.provider = cand.provider.name
        ex.cost = cost(cand.price, usage.prompt_tokens, usage.completion_tokens)
        total = usage.total_tokens
        reservation.settle(total)
        outcome.provider_reservation.settle(total)
        key_id = ex.principal.key_id if ex.principal else None
        self.rt.usage.record(key_id, ex.provider, cand.model, usage.prompt_tokens, usage.completion_tokens, ex.cost)
        metrics.count_tokens(ex.provider, ex.model, usage.prompt_tokens, usage.completion_tokens, ex.cost)
        if outcome.fallback:
            metrics.FALLBACKS.labels(ex.route).inc()
        metrics.observe_upstream(ex.provider, outcome.upstream_seconds)

    def _on_rejected(self, ex: Exchange, exc: BridgeError, request: web.BaseRequest) -> None:
        """Count and audit the rejections that matter for security."""
        audit = self.rt.audit
        if isinstance(exc, AuthenticationFailed):
            audit.security("auth_failure", request_id=ex.request_id, route=ex.route, reason=exc.code,
                           client_subject=client_subject(request))
        elif isinstance(exc, RateLimited):
            scope = "budget" if exc.code == "budget_exceeded" else "rate"
            metrics.RATE_LIMITED.labels(scope).inc()
            audit.security("rate_limited", request_id=ex.request_id, route=ex.route, limit=scope,
                           key_id=ex.principal.key_id if ex.principal else None)

    def _finish(self, ex: Exchange, resp: web.StreamResponse) -> web.StreamResponse:
        ex.status = ex.status or resp.status
        # Account (metrics, usage record, audit) once aiohttp has sent the answer: the audit
        # writer thread, woken by the record, then no longer holds the GIL while this answer is
        # being written (at 16 req/s that was +0.8 ms p50; tests/benchmarks/bench_proxy.py).
        asyncio.get_running_loop().call_soon(self._account, ex)
        return resp

    def _account(self, ex: Exchange) -> None:
        elapsed = time.monotonic() - ex.started
        metrics.count_request(ex.route, ex.status, ex.provider, ex.model)
        metrics.observe_latency(ex.route, elapsed)
        audit = self.rt.audit
        if not audit.enabled:
            return
        p, usage = ex.principal, ex.usage
        audit.request(RequestAudit(
            ex.request_id, ex.route, ex.status, round(elapsed * 1000, 3), p.key_id if p else None,
            p.owner if p else None, ex.client_subject, ex.provider if ex.outcome else None, ex.model,
            usage.prompt_tokens, usage.completion_tokens, ex.cost, bool(ex.outcome and ex.outcome.fallback),
            False, ex.redactions, ex.error_code, ex.prompt, ex.response, ex.redacted_types))


def _expire(ex: Exchange, task: "asyncio.Task[Any]") -> None:
    ex.timed_out = True
    task.cancel()


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    try:
        return await request.content.readexactly(request.content_length) if request.content_length else \
            await _read_chunked(request, limit)
    except asyncio.IncompleteReadError:
        raise InvalidRequest("the request body ended early") from None


async def _read_chunked(request: web.BaseRequest, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)

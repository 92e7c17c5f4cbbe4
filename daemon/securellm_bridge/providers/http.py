"""What every provider shares: one pooled upstream client, error mapping, Retry-After.

Each provider owns exactly one :class:`~.client.UpstreamClient` (keep-alive pooling), created
on start and closed on shutdown. The URL is always built from configuration, never from the
client's request, so a client cannot make the gateway call an address of its choosing.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any, Callable, Mapping

from ..config.providers import ProviderConfig
from .base import UpstreamFailure
from .client import Response, UpstreamClient
from .messages import MalformedResponse, TransportError
from .openai_shapes import TokenUsage, count, error_body

ErrorMapper = Callable[[int, bytes], "tuple[int, dict[str, Any]]"]


def make_client(cfg: ProviderConfig) -> UpstreamClient:
    """The provider's pool: ``max_connections``, connect timeout ``min(10, timeout_s)``, read
    timeout ``timeout_s`` between bytes (a long generation streams, so no total timeout)."""
    return UpstreamClient(max_connections=cfg.max_connections, connect_timeout=min(10.0, cfg.timeout_s),
                          read_timeout=cfg.timeout_s)


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if present."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def openai_error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """An OpenAI-compatible upstream's error, checked and bounded, for the client."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) and isinstance(error.get("message"), str) else None
    if status in (401, 403, 407):
        return 502, error_body("the upstream rejected the gateway's credentials", "upstream_error",
                               "upstream_auth_failed")
    text = f"upstream: {message[:500]}" if message else f"upstream returned HTTP {status}"
    if 400 <= status < 500 and status != 429:
        err_type = error.get("type") if isinstance(error, dict) and isinstance(error.get("type"), str) else None
        return status, error_body(text, err_type or "invalid_request_error", "upstream_rejected")
    return 502 if status != 429 else 429, error_body(text, "upstream_error", "upstream_error")


def failure_for_status(provider: str, status: int, body: bytes, headers: Any, mapper: ErrorMapper) -> UpstreamFailure:
    """429, 408 and 5xx are retryable; other statuses are final and passed on, translated."""
    retryable = status in (408, 429) or status >= 500
    client_status, err = mapper(status, body)
    if retryable:
        client_status = 429 if status == 429 else (504 if status in (408, 504) else 502)
    return UpstreamFailure(f"{provider}: upstream returned HTTP {status}", retryable=retryable,
                           status=client_status, retry_after=retry_after(headers),
                           body=json.dumps(err).encode())


def transport_failure(provider: str, exc: BaseException) -> UpstreamFailure:
    """A connect error, reset, malformed response or timeout: always retryable."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamFailure(f"{provider}: upstream timed out", retryable=True, status=504)
    if isinstance(exc, MalformedResponse):
        return malformed(provider, str(exc))
    return UpstreamFailure(f"{provider}: upstream connection failed ({type(exc).__name__})", retryable=True)


def malformed(provider: str, what: str) -> UpstreamFailure:
    return UpstreamFailure(f"{provider}: upstream sent {what}", retryable=True)


def usage_from(obj: Any) -> TokenUsage:
    """OpenAI ``usage`` object → TokenUsage (missing parts count as 0)."""
    if not isinstance(obj, dict):
        return TokenUsage()
    details = obj.get("prompt_tokens_details")
    cached = count(details, "cached_tokens") if isinstance(details, dict) else 0
    return TokenUsage(count(obj, "prompt_tokens"), count(obj, "completion_tokens"), cached)


#: What the upstream client raises for a failed exchange (``TimeoutError`` is an ``OSError``).
TRANSPORT_ERRORS = (TransportError, OSError)


async def post(client: UpstreamClient, provider: str, url: str, data: bytes, headers: Mapping[str, str],
               mapper: ErrorMapper) -> Response:
    """POST; a transport error or a non-200 answer becomes an :class:`UpstreamFailure`."""
    try:
        resp = await client.post(url, data, headers)
    except TRANSPORT_ERRORS as exc:
        raise transport_failure(provider, exc) from None
    if resp.status != 200:
        raise failure_for_status(provider, resp.status, await read(resp, provider), resp.headers, mapper)
    return resp


async def read(resp: Response, provider: str) -> bytes:
    """The whole body; the connection goes back to the pool (or is closed if the body did not end)."""
    try:
        return await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise transport_failure(provider, exc) from None


def json_object(body: bytes, provider: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise malformed(provider, "malformed JSON") from None
    if not isinstance(parsed, dict):
        raise malformed(provider, "a JSON value that is not an object")
    return parsed

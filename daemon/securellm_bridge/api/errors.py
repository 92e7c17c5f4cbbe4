"""The one place where daemon errors become HTTP responses, in OpenAI's error JSON shape:
``{"error": {"message", "type", "param", "code"}}``. No traceback ever reaches a client."""

from __future__ import annotations

import json
import math

from aiohttp import web

from ..errors import BridgeError, Kind
from ..providers import openai_shapes
from ..providers.base import UpstreamFailure

STATUS: dict[Kind, tuple[int, str]] = {
    Kind.INVALID: (400, "invalid_request_error"),
    Kind.UNAUTHENTICATED: (401, "invalid_request_error"),
    Kind.FORBIDDEN: (403, "permission_error"),
    Kind.NOT_FOUND: (404, "invalid_request_error"),
    Kind.CONFLICT: (409, "invalid_request_error"),
    Kind.TOO_LARGE: (413, "invalid_request_error"),
    Kind.RATE_LIMITED: (429, "rate_limit_error"),
    Kind.UNAVAILABLE: (503, "server_error"),
    Kind.UPSTREAM: (502, "upstream_error"),
    Kind.TIMEOUT: (504, "timeout_error"),
    Kind.INTERNAL: (500, "server_error"),
}


def error_body(message: str, err_type: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(openai_shapes.error_body(message, err_type, code, param)).encode()


def status_and_body(exc: BridgeError) -> tuple[int, bytes]:
    if isinstance(exc, UpstreamFailure):
        if exc.body is not None:
            return exc.status, exc.body
        return exc.status, error_body(exc.message, "upstream_error", exc.code)
    status, err_type = STATUS[exc.kind]
    return status, error_body(exc.message, err_type, exc.code, exc.param)


def error_response(exc: BridgeError, headers: dict[str, str]) -> web.Response:
    status, body = status_and_body(exc)
    if exc.retry_after is not None:
        headers = {**headers, "Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def internal_error(headers: dict[str, str]) -> web.Response:
    return web.Response(status=500, content_type="application/json", headers=headers,
                        body=error_body("internal error; the request id is in the x-request-id header",
                                        "server_error", "internal_error"))

"""The one exception hierarchy of the daemon.

Every error the daemon raises on purpose is a :class:`BridgeError`. Each plane translates
it in exactly one place: the HTTP API into the OpenAI error JSON shape
(``api/errors.py``), the control plane into a gRPC status (``control/errors.py``).
Messages must never contain secrets: they are shown to clients and written to logs.
"""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """What went wrong, independent of the transport that reports it."""

    INVALID = "invalid"  # bad input: HTTP 400, gRPC INVALID_ARGUMENT
    UNAUTHENTICATED = "unauthenticated"  # 401, UNAUTHENTICATED
    FORBIDDEN = "forbidden"  # 403, PERMISSION_DENIED
    NOT_FOUND = "not_found"  # 404, NOT_FOUND
    CONFLICT = "conflict"  # 409, FAILED_PRECONDITION
    TOO_LARGE = "too_large"  # 413, INVALID_ARGUMENT
    RATE_LIMITED = "rate_limited"  # 429, RESOURCE_EXHAUSTED
    UNAVAILABLE = "unavailable"  # 503, UNAVAILABLE
    UPSTREAM = "upstream"  # 502, UNAVAILABLE
    TIMEOUT = "timeout"  # 504, DEADLINE_EXCEEDED
    INTERNAL = "internal"  # 500, INTERNAL


class BridgeError(Exception):
    """Base of every deliberate error. ``message`` is safe to show to a client."""

    kind: Kind = Kind.INTERNAL
    #: OpenAI-style machine-readable code, e.g. ``invalid_api_key``.
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class ConfigError(BridgeError):
    """A configuration problem: names the file, the dotted key and what was expected."""

    kind = Kind.INVALID

    def __init__(self, file: str, key: str, expected: str) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        where = f"{file}: " if file else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{expected}", param=key or None)


class ConfigErrors(BridgeError):
    """Several configuration problems found in one pass."""

    kind = Kind.INVALID

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.message for e in errors))


class InvalidRequest(BridgeError):
    kind = Kind.INVALID
    code = "invalid_request"


class AuthenticationFailed(BridgeError):
    kind = Kind.UNAUTHENTICATED
    code = "invalid_api_key"


class PermissionDenied(BridgeError):
    kind = Kind.FORBIDDEN
    code = "permission_denied"


class NotFound(BridgeError):
    kind = Kind.NOT_FOUND
    code = "not_found"


class Conflict(BridgeError):
    kind = Kind.CONFLICT
    code = "conflict"


class PayloadTooLarge(BridgeError):
    kind = Kind.TOO_LARGE
    code = "payload_too_large"


class RateLimited(BridgeError):
    kind = Kind.RATE_LIMITED
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class Unavailable(BridgeError):
    kind = Kind.UNAVAILABLE
    code = "unavailable"


class UpstreamError(BridgeError):
    kind = Kind.UPSTREAM
    code = "upstream_error"


class UpstreamTimeout(BridgeError):
    kind = Kind.TIMEOUT
    code = "timeout"


class StateError(BridgeError):
    """The state database could not be opened or migrated."""

    kind = Kind.INTERNAL
    code = "state_error"

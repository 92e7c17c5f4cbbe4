"""Who is calling: the API key (looked up by hash) and the client certificate's subject."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from aiohttp import web

from ..errors import AuthenticationFailed, PermissionDenied
from ..security.keys import KeyService
from ..security.tls import peer_subject
from ..store.keys import KeyRow

_subjects: "WeakKeyDictionary[ssl.SSLObject, str | None]" = WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Principal:
    key: KeyRow | None
    cert_subject: str | None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    @property
    def owner(self) -> str | None:
        return self.key.owner if self.key else None


def client_subject(request: web.BaseRequest) -> str | None:
    """The verified client certificate's subject, computed once per TLS connection."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    try:
        return _subjects[ssl_object]
    except KeyError:
        subject = _subjects[ssl_object] = peer_subject(ssl_object)
        return subject


def presented_key(request: web.BaseRequest) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("the Authorization header must be 'Bearer <API key>'")
        return token.strip()
    return request.headers.get("x-api-key") or None


def authenticate(request: web.BaseRequest, keys: KeyService, require_key: bool) -> Principal:
    token = presented_key(request)
    if token is None:
        if require_key:
            raise AuthenticationFailed("an API key is required: send 'Authorization: Bearer <key>' or 'x-api-key'",
                                       code="missing_api_key")
        return Principal(None, client_subject(request))
    return Principal(keys.authenticate(token), client_subject(request))


def authorize(principal: Principal, model: str) -> None:
    key = principal.key
    if key is not None and not key.allows_model(model):
        raise PermissionDenied(f"this API key may not use the model {model!r}", code="model_not_allowed",
                               param="model")

"""``securellm.control.v1.Keys``."""

from __future__ import annotations

import logging

import grpc

from .._pb import keys_pb2, keys_pb2_grpc
from ..audit import AuditLog
from ..security.keys import KeyPolicy, KeyService
from .convert import api_key

log = logging.getLogger(__name__)


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keys: KeyService, audit: AuditLog) -> None:
        self._keys = keys
        self._audit = audit

    async def Create(self, request: keys_pb2.CreateKeyRequest,
                     context: grpc.aio.ServicerContext) -> keys_pb2.CreateKeyResponse:
        policy = KeyPolicy(
            rpm=request.rpm if request.HasField("rpm") else None,
            tpm=request.tpm if request.HasField("tpm") else None,
            max_budget=request.max_budget if request.HasField("max_budget") else None,
            budget_period=request.budget_period or "month",
            dlp_mode=request.dlp_mode if request.HasField("dlp_mode") else None,
            strategy=request.strategy if request.HasField("strategy") else None)
        new = await self._keys.create(request.owner, tuple(request.allowed_models), policy)
        log.info("API key %s created for owner %s", new.record.id, new.record.owner,
                 extra={"SECURELLM_KEY_ID": new.record.id})
        self._audit.admin("key_created", key_id=new.record.id, owner=new.record.owner,
                          models=list(new.record.allowed_models) or None)
        return keys_pb2.CreateKeyResponse(key=api_key(new.record), secret=new.plaintext)

    async def List(self, request: keys_pb2.ListKeysRequest,
                   context: grpc.aio.ServicerContext) -> keys_pb2.ListKeysResponse:
        rows = [r for r in self._keys.list() if request.include_revoked or not r.revoked]
        return keys_pb2.ListKeysResponse(keys=[api_key(r) for r in rows])

    async def Revoke(self, request: keys_pb2.RevokeKeyRequest,
                     context: grpc.aio.ServicerContext) -> keys_pb2.RevokeKeyResponse:
        row = await self._keys.revoke(request.id)
        log.info("API key %s revoked", row.id, extra={"SECURELLM_KEY_ID": row.id})
        self._audit.admin("key_revoked", key_id=row.id, owner=row.owner)
        return keys_pb2.RevokeKeyResponse(key=api_key(row))

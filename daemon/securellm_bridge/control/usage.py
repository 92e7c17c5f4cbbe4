"""``securellm.control.v1.Usage``."""

from __future__ import annotations

from datetime import date

import grpc

from .._pb import usage_pb2, usage_pb2_grpc
from ..errors import InvalidRequest, NotFound
from ..security.keys import KeyService
from ..usage import UsageRecorder


class UsageServicer(usage_pb2_grpc.UsageServicer):
    def __init__(self, usage: UsageRecorder, keys: KeyService) -> None:
        self._usage = usage
        self._keys = keys

    async def Get(self, request: usage_pb2.GetUsageRequest,
                  context: grpc.aio.ServicerContext) -> usage_pb2.GetUsageResponse:
        since: date | None = None
        if request.since:
            try:
                since = date.fromisoformat(request.since)
            except ValueError:
                raise InvalidRequest(f"since must be a date YYYY-MM-DD, got {request.since!r}",
                                     param="since") from None
        key_id = request.key_id or None
        if key_id is not None and all(row.id != key_id for row in self._keys.list()):
            raise NotFound(f"no API key with id {key_id!r}")
        rows = await self._usage.query(key_id, since)
        totals = usage_pb2.UsageTotals(
            requests=sum(r.requests for r in rows), prompt_tokens=sum(r.prompt_tokens for r in rows),
            completion_tokens=sum(r.completion_tokens for r in rows), cost=sum(r.cost for r in rows))
        return usage_pb2.GetUsageResponse(
            rows=[usage_pb2.UsageRow(day=r.day.isoformat(), key_id=r.key_id or "", provider=r.provider,
                                     model=r.model, requests=r.requests, prompt_tokens=r.prompt_tokens,
                                     completion_tokens=r.completion_tokens, cost=r.cost) for r in rows],
            totals=totals)

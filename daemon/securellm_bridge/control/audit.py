"""``securellm.control.v1.Audit``: query and tail the audit trail in the journal.

The journal is read with ``systemd.journal.Reader`` off the event loop: Query in the default
executor, each Tail in a thread of its own (it waits for new records) that hands records to
the stream through a bounded queue. A Tail ends when the client goes away or the daemon stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, AsyncIterator, Mapping

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from .._pb import audit_pb2, audit_pb2_grpc
from ..audit.reader import Entry, Filter, JournalSource
from ..audit.record import CHAIN, EVENT, PREFIX, SEQ, TIME
from ..errors import InvalidRequest, Unavailable

if TYPE_CHECKING:
    from ..runtime import Runtime

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000
DEFAULT_TAIL_LINES = 10
_QUEUE_SIZE = 256
_STOP_CHECK_S = 1.0
_OWN = frozenset({SEQ, EVENT, TIME, CHAIN})


def to_record(e: Entry) -> audit_pb2.AuditRecord:
    f = e.fields
    extra = {k[len(PREFIX):].lower(): v for k, v in f.items() if k.startswith(PREFIX) and k not in _OWN}
    priority = f.get("PRIORITY", "")
    when = Timestamp()
    try:
        when.FromJsonString(f[TIME])
    except (KeyError, ValueError):
        when.FromNanoseconds(int(e.time * 1e9))
    return audit_pb2.AuditRecord(
        seq=e.seq or 0, event=e.event, time=when, message=f.get("MESSAGE", ""),
        priority=int(priority) if priority.isdigit() else 0, message_id=f.get("MESSAGE_ID", ""),
        fields=extra, chain=e.chain)


def _match(flt: audit_pb2.AuditFilter) -> Mapping[str, str]:
    return {"event": flt.event, "key_id": flt.key_id, "provider": flt.provider, "model": flt.model,
            "status": flt.status}


class AuditServicer(audit_pb2_grpc.AuditServicer):
    def __init__(self, runtime: "Runtime") -> None:
        self._rt = runtime
        self._source = JournalSource()

    async def Query(self, request: audit_pb2.QueryAuditRequest,
                    context: grpc.aio.ServicerContext) -> audit_pb2.QueryAuditResponse:
        limit = request.limit or DEFAULT_LIMIT
        if limit > MAX_LIMIT:
            raise InvalidRequest(f"limit must be at most {MAX_LIMIT}", param="limit")
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else None
        until = request.until.ToNanoseconds() / 1e9 if request.HasField("until") else None
        flt = Filter(since, until, _match(request.filter))
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(None, self._source.newest, flt, limit + 1)
        except OSError as exc:
            raise Unavailable(f"cannot read {self._source.name}: {exc.strerror or exc}") from None
        return audit_pb2.QueryAuditResponse(records=[to_record(e) for e in found[-limit:]],
                                            truncated=len(found) > limit)

    async def Tail(self, request: audit_pb2.TailAuditRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[audit_pb2.AuditRecord]:
        lines = request.lines if request.HasField("lines") else DEFAULT_TAIL_LINES
        if lines > MAX_LIMIT:
            raise InvalidRequest(f"lines must be at most {MAX_LIMIT}", param="lines")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Entry | BaseException] = asyncio.Queue(_QUEUE_SIZE)
        stop = threading.Event()
        flt = Filter(match=_match(request.filter))
        thread = threading.Thread(target=self._follow, args=(flt, lines, queue, loop, stop),
                                  name="audit-tail", daemon=True)
        thread.start()
        try:
            while self._rt.state != "stopping":
                try:
                    item = await asyncio.wait_for(queue.get(), _STOP_CHECK_S)
                except asyncio.TimeoutError:
                    continue
                if isinstance(item, BaseException):
                    raise Unavailable(f"cannot read {self._source.name}: {item}")
                yield to_record(item)
        finally:
            stop.set()

    def _follow(self, flt: Filter, lines: int, queue: asyncio.Queue[Entry | BaseException],
                loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        try:
            for entry in self._source.follow(flt, lines, stop):
                if not _hand_over(entry, queue, loop, stop):
                    return
        except Exception as exc:  # reported to the client by the stream
            _hand_over(exc, queue, loop, stop)


def _hand_over(item: Entry | BaseException, queue: asyncio.Queue[Entry | BaseException],
               loop: asyncio.AbstractEventLoop, stop: threading.Event) -> bool:
    """Put ``item`` on the stream's queue, waiting while it is full; False once stopped."""
    try:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
    except RuntimeError:  # the loop is closed
        return False
    while not stop.is_set():
        try:
            fut.result(timeout=_STOP_CHECK_S)
            return True
        except concurrent.futures.TimeoutError:
            continue
    fut.cancel()
    return False

"""``securellm.control.v1.Events``: the local models' event bus as a stream.

Each Watch is one subscriber of :class:`~..local.events.EventBus` with its own bounded
queue. The initial metadata goes out once the subscription is in place, so a client can
wait for it before it changes anything. A Watch ends when the client goes away or the
daemon stops (checked every second, so it never holds up the drain).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from .._pb import models_pb2, models_pb2_grpc
from ..local.events import Event
from .local_convert import local_models, model_event

if TYPE_CHECKING:
    from ..runtime import Runtime

STOP_CHECK_S = 1.0


class EventsServicer(models_pb2_grpc.EventsServicer):
    def __init__(self, runtime: "Runtime") -> None:
        self._rt = runtime

    async def Watch(self, request: models_pb2.WatchEventsRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[models_pb2.ModelEvent]:
        events = local_models(self._rt).events.watch()
        pending: asyncio.Future[Event] = asyncio.ensure_future(anext(events))
        # The task's first step, scheduled before this coroutine resumes, registers its queue.
        await asyncio.sleep(0)
        await context.send_initial_metadata(())
        try:
            while self._rt.state != "stopping":
                done, _ = await asyncio.wait({pending}, timeout=STOP_CHECK_S)
                if not done:
                    continue
                event = pending.result()
                pending = asyncio.ensure_future(anext(events))
                if not request.model or event.model == request.model or event.kind == "dropped":
                    yield model_event(event)
        finally:
            pending.cancel()  # ends the subscription: the bus forgets its queue
            await asyncio.wait({pending})

"""A small in-process event bus: model state changes, evictions and crashes.

Publishers call :meth:`EventBus.publish` (sync, O(subscribers)); each watcher gets its own
bounded queue, so a slow ``securellmctl events`` cannot hold up the daemon: when its queue
is full the oldest event is dropped and the watcher is told how many it missed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Event:
    kind: str  # "model_state", "eviction", "crash", "load_progress", "dropped"
    model: str
    state: str = ""
    reason: str = ""
    detail: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class EventBus:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()
        self._dropped: dict[asyncio.Queue[Event], int] = {}

    def publish(self, event: Event) -> None:
        for q in self._queues:
            if q.full():
                q.get_nowait()
                self._dropped[q] = self._dropped.get(q, 0) + 1
            q.put_nowait(event)

    async def watch(self) -> AsyncIterator[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(q)
        try:
            while True:
                event = await q.get()
                dropped = self._dropped.pop(q, 0)
                if dropped:
                    yield Event("dropped", "", reason=f"{dropped} events were dropped (watcher too slow)")
                yield event
        finally:
            self._queues.discard(q)
            self._dropped.pop(q, None)

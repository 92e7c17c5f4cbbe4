"""Which loaded models to evict to make room for a load: pure, so it can be tested and
simulated exhaustively.

Only idle (no request in flight), unpinned models are candidates. ``priority`` evicts the
lowest ``priority`` first (then least recently used), ``lru`` the least recently used,
``fifo`` the first loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

Policy = Literal["priority", "lru", "fifo"]


@dataclass(frozen=True)
class Resident:
    name: str
    bytes: int
    priority: int
    pinned: bool
    in_flight: int
    loaded_at: float
    last_used: float


@dataclass(frozen=True)
class Plan:
    """``evict`` frees enough now; ``wait_for`` lists busy models whose draining would also be needed."""

    evict: tuple[str, ...]
    enough: bool
    wait_for: tuple[str, ...] = ()


def _order(residents: Sequence[Resident], policy: Policy) -> list[Resident]:
    if policy == "priority":
        return sorted(residents, key=lambda r: (r.priority, r.last_used, r.name))
    if policy == "lru":
        return sorted(residents, key=lambda r: (r.last_used, r.name))
    return sorted(residents, key=lambda r: (r.loaded_at, r.name))


def plan(residents: Sequence[Resident], need: int, available: int, policy: Policy) -> Plan:
    """Choose victims so that ``available + freed >= need``."""
    if need <= available:
        return Plan((), True)
    movable = [r for r in residents if not r.pinned]
    chosen: list[str] = []
    freed = 0
    for r in _order([r for r in movable if r.in_flight == 0], policy):
        if available + freed >= need:
            break
        chosen.append(r.name)
        freed += r.bytes
    if available + freed >= need:
        return Plan(tuple(chosen), True)
    busy: list[str] = []
    for r in _order([r for r in movable if r.in_flight > 0], policy):
        if available + freed >= need:
            break
        busy.append(r.name)
        freed += r.bytes
    return Plan(tuple(chosen), False, tuple(busy) if available + freed >= need else ())

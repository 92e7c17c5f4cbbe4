"""Audit event types: each has a fixed journald ``MESSAGE_ID``, a ``PRIORITY`` and a summary.

The MESSAGE_IDs never change: operators filter on them (``journalctl MESSAGE_ID=...``).
docs/AUDIT.md lists them with their fields; keep both in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping

# syslog priorities, as journald's PRIORITY field expects them.
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6


class Category(Enum):
    REQUEST = "request"
    ADMIN = "admin"
    SECURITY = "security"


@dataclass(frozen=True)
class EventType:
    name: str
    #: 128-bit id as 32 lowercase hex digits, the form journald uses.
    message_id: str
    priority: int
    category: Category
    #: ``MESSAGE`` template; ``{field}`` takes the event's field (``-`` when absent).
    summary: str


_TYPES = (
    EventType("request", "5b1f0c2e7d8a4e3c9a6b0d4f1e2c3a5b", INFO, Category.REQUEST,
              "{route} {provider}/{model} -> {status} in {duration_ms} ms (request {request_id}, key {key_id})"),
    EventType("key_created", "0e6c9f4a2b7d4c81a3e5f7091b2d4c6e", NOTICE, Category.ADMIN,
              "API key {key_id} created for owner {owner}"),
    EventType("key_revoked", "a4d2e6f8c0b14e3d9f7a5c3e1b0d2f4a", NOTICE, Category.ADMIN,
              "API key {key_id} revoked (owner {owner})"),
    EventType("model_load", "3c8e1a5f7b9d4f20b6e4a2c0d8f6b4e2", NOTICE, Category.ADMIN,
              "model {model} loaded on {backend}"),
    EventType("model_unload", "d9b7f5e3a1c04b6e8d2f0a4c6e8b0d2f", NOTICE, Category.ADMIN,
              "model {model} unloaded from {backend} ({reason})"),
    EventType("config_reload", "6f4d2b0e8c6a4f1e9b3d5f7a9c1e3b5d", NOTICE, Category.ADMIN,
              "configuration reload {result}: {path} (changed: {changed})"),
    EventType("config_change", "b2e0c8a6f4d24b9e7c5a3e1f9d7b5c3a", NOTICE, Category.ADMIN,
              "configuration changed: {keys}"),
    EventType("auth_failure", "8a6c4e2f0b9d4e7c5a3f1d9b7e5c3a1f", WARNING, Category.SECURITY,
              "authentication failed ({reason}) on {route} from {client_subject}"),
    EventType("rate_limited", "1d3f5b7e9a0c4e2f8b6d4a2c0e8f6d4b", NOTICE, Category.SECURITY,
              "rate limited ({limit}) key {key_id} on {route}"),
    EventType("injection_flagged", "e7c5a3f1d9b74e2c0a8f6d4b2e0c8a6f", WARNING, Category.SECURITY,
              "prompt injection flagged (score {score}, action {action}) request {request_id}"),
    EventType("dlp_blocked", "4b2d0f8e6c4a4d1f3e5b7d9f1a3c5e7b", WARNING, Category.SECURITY,
              "request {request_id} blocked by DLP ({detectors})"),
)

EVENTS: Mapping[str, EventType] = {t.name: t for t in _TYPES}
ADMIN_EVENTS = frozenset(t.name for t in _TYPES if t.category is Category.ADMIN)
SECURITY_EVENTS = frozenset(t.name for t in _TYPES if t.category is Category.SECURITY)


def request_priority(status: int) -> int:
    """A request record's PRIORITY follows its HTTP status: 5xx warning, 4xx notice."""
    if status >= 500:
        return WARNING
    if status >= 400:
        return NOTICE
    return INFO


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "-"


def summarize(event: EventType, values: Mapping[str, str]) -> str:
    """The readable ``MESSAGE`` of a record; fields that are absent read as ``-``."""
    return event.summary.format_map(_Missing(values))

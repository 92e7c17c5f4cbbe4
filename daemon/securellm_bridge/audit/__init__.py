"""The audit trail: tamper-evident records in journald (docs/AUDIT.md).

``AuditLog`` (writer.py) is what the daemon holds; ``RequestAudit`` (record.py) is what the
request pipeline reports; reader.py and verify.py read the trail back. ``AuditLog`` is
imported on first use: the audit writer process (child.py) imports this package too, and
must not load what the daemon's side needs (Prometheus, asyncio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .record import RequestAudit

if TYPE_CHECKING:
    from .writer import AuditLog

__all__ = ["AuditLog", "RequestAudit"]


def __getattr__(name: str) -> Any:
    if name == "AuditLog":
        from .writer import AuditLog

        return AuditLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

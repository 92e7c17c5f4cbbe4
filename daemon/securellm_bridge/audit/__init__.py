"""The audit trail: tamper-evident records in journald (docs/AUDIT.md).

``AuditLog`` (writer.py) is what the daemon holds; ``RequestAudit`` (record.py) is what the
request pipeline reports; reader.py and verify.py read the trail back.
"""

from .record import RequestAudit
from .writer import AuditLog

__all__ = ["AuditLog", "RequestAudit"]

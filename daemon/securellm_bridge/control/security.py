"""``securellm.control.v1.Security``: the security posture audit, run by the daemon.

The checks stat and read files, so they run in the default executor. The daemon audits as
itself: it sees the files the way it uses them, and its own user and group are the ones
files may belong to.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import TYPE_CHECKING

import grpc

from .._pb import security_pb2, security_pb2_grpc
from ..errors import InvalidRequest
from ..security.posture_base import Finding, Severity

if TYPE_CHECKING:
    from ..runtime import Runtime

SEVERITY: dict[Severity, security_pb2.Severity] = {
    "low": security_pb2.SEVERITY_LOW,
    "medium": security_pb2.SEVERITY_MEDIUM,
    "high": security_pb2.SEVERITY_HIGH,
}


def to_proto(f: Finding) -> security_pb2.Finding:
    return security_pb2.Finding(id=f.id, severity=SEVERITY[f.severity], title=f.title, detail=f.detail, fix=f.fix)


class SecurityServicer(security_pb2_grpc.SecurityServicer):
    def __init__(self, runtime: "Runtime") -> None:
        self._rt = runtime

    async def RunAudit(self, request: security_pb2.RunAuditRequest,
                       context: grpc.aio.ServicerContext) -> security_pb2.AuditReport:
        # Imported on the first audit: the certificate checks load ``cryptography`` (~8 MB of
        # RSS), which the daemon otherwise never needs unless a CRL is configured.
        from ..security import posture

        loop = asyncio.get_running_loop()
        if request.HasField("config_path"):
            path = request.config_path
            if not os.path.isabs(path):
                raise InvalidRequest("config_path must be absolute (the daemon's working directory is not yours)",
                                     param="config_path")
            findings = await loop.run_in_executor(None, functools.partial(posture.audit_path, path, in_daemon=True))
        else:
            loaded = self._rt.loaded
            path = loaded.path
            findings = await loop.run_in_executor(None, posture.audit_running, loaded.config, path)
        return security_pb2.AuditReport(config_path=path, findings=[to_proto(f) for f in findings])


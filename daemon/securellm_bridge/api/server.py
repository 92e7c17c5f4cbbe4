"""The HTTPS listener: binds ``server.listen`` with the TLS context, swaps certificates on
reload without dropping connections, and drains on stop."""

from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web, web_protocol

from ..config.schema import Config
from ..errors import StateError
from ..security.tls import ContextHolder, build_server_context
from .errors import error_body
from .routes import build_handler

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)


def tls_context(cfg: Config):  # type: ignore[no-untyped-def]
    tls = cfg.security.tls
    return build_server_context(tls.cert_path, tls.key_path, tls.client_ca_path, tls.require_client_cert,
                                tls.crl_path)


class HttpServer:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        cfg = rt.config
        self.tls: ContextHolder | None = ContextHolder(tls_context(cfg)) if cfg.security.tls.enabled else None
        server = _JsonErrorServer(build_handler(rt), handler_cancellation=True, access_log=None,
                                  max_line_size=cfg.limits.max_header_bytes,
                                  max_field_size=cfg.limits.max_header_bytes)
        self._runner = web.ServerRunner(server)
        self._site: web.TCPSite | None = None
        self.address = ""

    async def start(self) -> None:
        cfg = self.rt.config
        host, port = cfg.server.host_port
        if self.tls is None:
            log.warning("TLS IS DISABLED ([security.tls] enabled = false): the inference API is served over "
                        "plain HTTP on %s; API keys and prompts cross the network in clear text", cfg.server.listen)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, ssl_context=self.tls.bound if self.tls else None,
                                 backlog=1024, reuse_address=True)
        try:
            await self._site.start()
        except OSError as exc:
            raise StateError(f"cannot listen on {cfg.server.listen}: {exc.strerror or exc}") from None
        sock = self._site._server.sockets[0]  # type: ignore[union-attr]
        bound = sock.getsockname()
        self.address = f"[{bound[0]}]:{bound[1]}" if sock.family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"

    @property
    def protocol(self) -> str:
        return "https" if self.tls else "http"

    def reload_tls(self, cfg: Config) -> None:
        """Build the new context first (errors keep the old one), then swap it for new handshakes."""
        if self.tls is not None and cfg.security.tls.enabled:
            self.tls.swap(tls_context(cfg))

    async def stop_accepting(self) -> None:
        if self._site is not None:
            server = self._site._server  # type: ignore[union-attr]
            if server is not None:
                server.close()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close."""
        await self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.rt.pipeline.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.rt.pipeline.in_flight:
            log.warning("drain deadline reached with %d requests in flight; closing them",
                        self.rt.pipeline.in_flight)
        await self._runner.cleanup()


class _JsonErrorHandler(web_protocol.RequestHandler):
    """Errors aiohttp answers itself (unparsable request, oversized header, a handler crash)
    in the OpenAI error shape too, with no traceback."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs; closes the connection
        text = "internal error" if status >= 500 else (message or HTTPStatus(status).phrase).splitlines()[0][:300]
        body = error_body(text, "invalid_request_error" if status < 500 else "server_error", f"http_{status}")
        resp = web.Response(status=plain.status, body=body, content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    """aiohttp has no option for the protocol class; the server only differs in ``__call__``."""

    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)

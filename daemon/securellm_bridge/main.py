"""``securellm-bridged``: parse arguments, load the config, run the daemon until a signal.

Exit codes: 0 after a clean stop, 1 when start-up fails, 2 for an invalid configuration
or invalid arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time

import uvloop

# grpcio's core runs its fork handlers unless told otherwise; a fork (every llama-server start)
# while a control call is in flight then crashes the child with SIGSEGV now and then. The
# daemon forks only to exec, so it needs no fork support. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from . import __version__, config, logs  # noqa: E402
from .errors import BridgeError, ConfigErrors  # noqa: E402
from .lifecycle import Notifier, run_watchdog, watchdog_interval  # noqa: E402
from .runtime import Runtime  # noqa: E402

log = logging.getLogger("securellm_bridge")

#: Set by tests only: SIGUSR2 then blocks the event loop, to prove the watchdog catches a hang.
TEST_HOOKS_ENV = "SECURELLM_TEST_HOOKS"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="securellm-bridged", description="The securellm-bridge daemon.")
    p.add_argument("--config", metavar="PATH",
                   help=f"config file (default: ${config.ENV_VAR}, else {config.DEFAULT_PATH})")
    p.add_argument("--version", action="version", version=f"securellm-bridged {__version__}")
    return p.parse_args(argv)


async def serve(loaded: config.LoadedConfig) -> int:
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    runtime = Runtime(loaded, notifier)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runtime.start()
    except BridgeError as exc:
        log.error("start-up failed: %s", exc)
        await runtime.stop()
        return 1
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_on_sighup(runtime)))
    if os.environ.get(TEST_HOOKS_ENV) == "1":
        loop.add_signal_handler(signal.SIGUSR2, _hang_event_loop)
    watchdog = None
    interval = watchdog_interval()
    if interval is not None:
        watchdog = asyncio.create_task(run_watchdog(notifier, interval), name="watchdog")
    _tune_gc()
    notifier.ready(runtime.status_line())
    log.info("securellm-bridged %s ready (pid %d)", __version__, os.getpid())
    await stop.wait()
    notifier.stopping()
    log.info("stopping: draining in-flight work for up to %.1f s", runtime.config.server.drain_timeout_seconds)
    await runtime.stop()
    if watchdog is not None:
        watchdog.cancel()
    log.info("stopped")
    return 0


async def _on_sighup(runtime: Runtime) -> None:
    runtime.notifier.reloading()
    try:
        await runtime.reload()
    except ConfigErrors as exc:
        log.error("reload failed; keeping the previous configuration:\n%s", exc)
    except Exception:
        log.exception("reload failed; keeping the previous configuration")
    runtime.notifier.ready(runtime.status_line())


#: Allocations between young-generation collections (CPython's default is 700).
GC_THRESHOLD0 = 5000


def _tune_gc() -> None:
    """Once started: the modules, config and runtime objects made so far live as long as the
    process, so move them out of the collector's sight (``gc.freeze``), and collect the young
    generation less often. A request's objects are freed by reference counting as it ends; the
    collector only looks for cycles, and under load it was 6–7 % of the CPU cycles
    (docs/PERFORMANCE.md)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, gen1, gen2)


def _hang_event_loop() -> None:
    log.warning("test hook: blocking the event loop")
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = config.resolve_path(args.config)
    try:
        loaded = config.load(path)
    except ConfigErrors as exc:
        print(f"securellm-bridged: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logs.setup(loaded.config.log.level)
    try:
        return uvloop.run(serve(loaded))
    finally:
        logs.shutdown()


if __name__ == "__main__":
    sys.exit(main())

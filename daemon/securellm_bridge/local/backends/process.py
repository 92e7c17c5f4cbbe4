"""A supervised child process: start, readiness, crash restarts, drain and a clean stop.

States: ``stopped -> starting -> ready -> draining -> stopping -> stopped``; ``failed`` when
it never became ready or crashed too often. A crash while ready restarts it (``ready ->
starting``) after a capped exponential backoff; ``RestartPolicy.max_crashes`` crashes
within ``window`` seconds fail it. A crash while draining stops it (it was going
away). Every transition is logged and delivered to the :meth:`SupervisedProcess.on_event`
listeners.

The child runs in a new session (its own process group), with ``PR_SET_PDEATHSIG`` set to
``SIGKILL`` so that it dies with the daemon; the signal follows the *thread* that forked it,
which is the event loop's. Its stdout and stderr are read line by line (bounded) and logged
with ``SECURELLM_MODEL`` and friends as structured fields. Stop sends ``SIGTERM`` to the
group, waits ``grace`` seconds, sends a second ``SIGTERM`` (llama-server lingers ~30 s after
the first one while a request runs), waits ``kill_after``, then ``SIGKILL``; the child is
always reaped. One task per process owns it; every wait is on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress

from securellm_bridge.errors import Conflict

from .children import ChildRegistry, die_with_parent
from .output import OutputLine, OutputReader, Parser, plain
from .states import ExitInfo, Launch, NotReady, ProcessEvent, RestartPolicy, StartupFailed, State

_EXIT_OUTPUT_WAIT = 1.0


class SupervisedProcess:
    """Runs ``launch()`` until stopped; see the module docstring for the states.

    ``launch`` is called before every (re)start, so a backend can pick a new port and key;
    :attr:`log_tail` still holds the previous process's output then.
    ``probe`` answers whether the child is ready (it may raise ``OSError``/``TimeoutError``,
    read as "not yet"); it is polled every ``probe_interval`` up to ``ready_timeout``.
    ``parse`` turns one line of output into a log level and the text to log (redacting
    secrets). A start-up exit whose output satisfies ``retryable`` (say, "port in use") is
    retried at once, up to ``start_attempts`` times, without counting as a crash.
    """

    def __init__(self, name: str, launch: Callable[[], Launch],
                 probe: Callable[[], Awaitable[bool]], *, program: str,
                 logger: logging.Logger, ready_timeout: float = 60.0,
                 probe_interval: float = 0.05, probe_timeout: float = 2.0, grace: float = 10.0,
                 kill_after: float = 5.0, policy: RestartPolicy = RestartPolicy(),
                 parse: Parser = plain,
                 retryable: Callable[[Sequence[str]], bool] | None = None,
                 start_attempts: int = 3, registry: ChildRegistry | None = None) -> None:
        self.name = name
        self.program = program
        self.policy = policy
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.kill_after = kill_after
        self._launch = launch
        self._probe = probe
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._retryable = retryable
        self._start_attempts = start_attempts
        self._registry = registry
        self._log = logger
        self._fields = {"SECURELLM_MODEL": name, "SECURELLM_BACKEND": program}
        self._output = OutputReader(name, program, logger, parse)
        self._listeners: list[Callable[[ProcessEvent], None]] = []
        self._state = State.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._exit: asyncio.Future[int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        #: Resolved at the next state change (requests waiting through a restart).
        self._transition: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._stop_grace: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._restarts = 0
        self._crashes: deque[float] = deque()
        self.last_exit: ExitInfo | None = None

    def __repr__(self) -> str:
        return f"SupervisedProcess({self.name!r}, state={self._state.value}, pid={self.pid})"

    @property
    def state(self) -> State:
        return self._state

    @property
    def pid(self) -> int | None:
        """The running process's pid; None between processes (see :attr:`last_exit`)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def restarts(self) -> int:
        """Restarts after crashes since the last :meth:`start`."""
        return self._restarts

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def log_tail(self) -> list[str]:
        """The last lines the current (or last) process wrote, redacted."""
        return [line.text for line in self._output.tail]

    def on_event(self, callback: Callable[[ProcessEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (on the loop) at every transition; returns an unsubscribe function."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def on_output(self, callback: Callable[[OutputLine], None]) -> Callable[[], None]:
        """Call ``callback`` with every line of output, after parsing and redaction."""
        return self._output.subscribe(callback)

    async def start(self) -> None:
        """Start and wait until ready; :class:`StartupFailed` (state ``failed``) otherwise."""
        if self._task is not None and not self._task.done():
            raise Conflict(f"{self.name} is already {self._state.value}")
        self._restarts = 0
        self._crashes.clear()
        self._stop.clear()
        self._stop_grace = None
        self._ready = asyncio.get_running_loop().create_future()
        self._set(State.STARTING, "start requested")
        self._task = asyncio.create_task(self._guarded(), name=f"supervise {self.name}")
        await asyncio.shield(self._ready)

    async def stop(self, *, grace: float | None = None, reason: str = "stop requested") -> None:
        """Terminate the child (see the module docstring) and wait until it is reaped."""
        task = self._task
        if task is None or task.done():
            return
        self._stop_grace = grace
        if self._state is not State.STOPPING:
            self._set(State.STOPPING, reason)
        self._stop.set()
        await asyncio.shield(task)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests (``ready -> draining``) and wait up to ``timeout`` seconds for
        the ones in flight; True when none is left."""
        if self._state is State.READY:
            self._set(State.DRAINING, "drain requested")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        """Count one request in flight; :class:`NotReady` unless the process is ready.

        A request that finds the process restarting after a crash waits for it (at most
        ``ready_timeout``) instead of failing at once: the crash is the daemon's business, and
        failing fast would also count against the model's circuit breaker and open it."""
        if self._state is State.STARTING and self._ready is not None and self._ready.done():
            await self._through_restart()
        if self._state is not State.READY:
            raise NotReady(f"local model {self.name} is {self._state.value}")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _through_restart(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while self._state is State.STARTING and loop.time() < deadline:
            if self._transition is None or self._transition.done():
                self._transition = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._transition), deadline - loop.time())
            except TimeoutError:
                return

    # -- the supervisor task ------------------------------------------------------------

    def _set(self, new: State, reason: str, exited: ExitInfo | None = None) -> None:
        returncode = exited.returncode if exited is not None else None
        event = ProcessEvent(self.name, self._state, new, reason,
                             exited.pid if exited is not None else self.pid, self._restarts,
                             returncode)
        self._state = new
        if self._transition is not None and not self._transition.done():
            self._transition.set_result(None)
        level = logging.ERROR if new is State.FAILED else \
            logging.WARNING if new is State.STARTING and returncode is not None else logging.INFO
        self._log.log(level, "%s %s: %s -> %s (%s)", self.program, self.name, event.old.value,
                      new.value, reason, extra={**self._fields, "SECURELLM_STATE": new.value})
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self._log.exception("state listener of %s failed", self.name, extra=self._fields)

    async def _guarded(self) -> None:
        try:
            await self._supervise()
        except asyncio.CancelledError:
            self._kill_group(signal.SIGKILL)  # the loop is going away: leave nothing behind
            self._not_ready(NotReady(f"the supervisor of {self.name} was cancelled"))
            raise
        except Exception as exc:
            self._log.exception("supervisor of %s failed", self.name, extra=self._fields)
            exited = None
            if self._proc is not None:
                self._kill_group(signal.SIGKILL)
                exited = await self._reap((signal.SIGKILL.name,))
            self._fail(f"supervisor error: {exc!r}", exited)

    async def _supervise(self) -> None:
        ever_ready, attempts = False, 0
        while True:
            try:
                await self._spawn()
            except OSError as exc:
                self._fail(f"cannot run {self.program}: {exc.strerror or exc}")
                return
            outcome = await self._until_ready()
            if outcome == "ready":
                ever_ready, attempts = True, 0
                self._set(State.READY, "ready")
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                outcome = await self._until_exit()
            if outcome == "stop":
                await self._finish_stop()
                return
            if outcome == "timeout":
                self._kill_group(signal.SIGKILL)
            exited = await self._reap((signal.SIGKILL.name,) if outcome == "timeout" else ())
            what = f"not ready after {self.ready_timeout:g} s" if outcome == "timeout" \
                else f"exited with status {exited.returncode}"
            if self._state is State.DRAINING:
                self._set(State.STOPPED, f"{what} while draining", exited)
                return
            if outcome == "exited" and attempts + 1 < self._start_attempts \
                    and self._retryable is not None and self._retryable(self.log_tail):
                attempts += 1
                self._log.warning("%s %s: %s; starting again (%s)", self.program, self.name, what,
                                  self._summary(), extra=self._fields)
                continue
            if not ever_ready:
                self._fail(f"{self.program} for {self.name} {what} during start-up: "
                           f"{self._summary()}", exited)
                return
            if not await self._after_crash(what, exited):
                return

    async def _after_crash(self, what: str, exited: ExitInfo) -> bool:
        """Count a crash; fail on a crash loop, else wait the backoff. True: start again."""
        now = asyncio.get_running_loop().time()
        self._crashes.append(now)
        while now - self._crashes[0] > self.policy.window:
            self._crashes.popleft()
        if len(self._crashes) >= self.policy.max_crashes:
            self._fail(f"crash loop: {len(self._crashes)} crashes within "
                       f"{self.policy.window:g} s, the last {what}: {self._summary()}", exited)
            return False
        self._restarts += 1
        delay = self.policy.backoff(len(self._crashes))
        self._set(State.STARTING, f"{what}; restart {self._restarts} in {delay:.2f} s", exited)
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        if self._stop.is_set():
            self._set(State.STOPPED, "stopped during the restart backoff")
            return False
        return True

    async def _spawn(self) -> None:
        launch = self._launch()
        self._output.reset()
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, env=dict(launch.env), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent())
        self._proc = proc
        self._exit = asyncio.ensure_future(proc.wait())
        assert proc.stdout is not None and proc.stderr is not None
        self._output.attach(proc.pid, proc.stdout, proc.stderr)
        self._log.info("%s %s: started pid %d: %s", self.program, self.name, proc.pid,
                       " ".join(launch.argv), extra={**self._fields, "SECURELLM_PID": proc.pid})
        if self._registry is not None:
            await self._registry.add(self.name, proc.pid, launch.argv[0])

    async def _until_ready(self) -> str:
        """``ready``, ``exited`` (before ready), ``timeout`` or ``stop``."""
        assert self._exit is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not stop.done() and not self._exit.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "timeout"
                try:
                    ok = await asyncio.wait_for(self._probe(),
                                                min(self._probe_timeout, remaining))
                except (OSError, TimeoutError):
                    ok = False
                if ok and not self._exit.done():
                    return "ready"
                await asyncio.wait({self._exit, stop}, timeout=min(self._probe_interval, remaining),
                                   return_when=asyncio.FIRST_COMPLETED)
            return "stop" if stop.done() else "exited"
        finally:
            stop.cancel()

    async def _until_exit(self) -> str:
        """``crashed`` or ``stop``."""
        assert self._exit is not None
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({self._exit, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        return "stop" if self._stop.is_set() else "crashed"

    async def _finish_stop(self) -> None:
        assert self._exit is not None
        grace = self.grace if self._stop_grace is None else self._stop_grace
        sent: list[str] = []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGTERM, self.kill_after),
                          (signal.SIGKILL, None)):
            if self._exit.done():
                break
            self._kill_group(sig)
            sent.append(sig.name)
            self._log.info("%s %s: sent %s (%d)", self.program, self.name, sig.name, len(sent),
                           extra={**self._fields, "SECURELLM_PID": self.pid})
            await asyncio.wait({self._exit}, timeout=wait)
        exited = await self._reap(tuple(sent))
        after = f" after {', '.join(sent)}" if sent else ""
        self._set(State.STOPPED, f"exited with status {exited.returncode}{after}", exited)
        self._not_ready(NotReady(f"{self.name} was stopped before it was ready"))

    async def _reap(self, signals: tuple[str, ...]) -> ExitInfo:
        """Wait for the exit status, kill what is left of the group, finish reading output."""
        assert self._proc is not None and self._exit is not None
        pid, returncode = self._proc.pid, await self._exit
        # Grandchildren (ollama runners) left in the group. The kernel reuses no pid while a
        # group of that id has members, so this can only hit the child's own group.
        self._kill_group(signal.SIGKILL)
        self._proc = None
        await self._output.finish(_EXIT_OUTPUT_WAIT)
        if self._registry is not None:
            await self._registry.remove(pid)
        self.last_exit = ExitInfo(pid, returncode, signals)
        return self.last_exit

    def _kill_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _fail(self, reason: str, exited: ExitInfo | None = None) -> None:
        self._set(State.FAILED, reason, exited)
        self._not_ready(StartupFailed(reason, self.log_tail))

    def _not_ready(self, exc: Exception) -> None:
        """Make a pending :meth:`start` raise ``exc``."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)

    def _summary(self) -> str:
        """The last error lines of the output (else its last lines), for a failure reason."""
        tail = list(self._output.tail)
        errors = [line.text for line in tail if line.level >= logging.ERROR][-3:]
        return " | ".join(errors or [line.text for line in tail][-3:]) or "no output"

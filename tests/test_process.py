"""SupervisedProcess and the child registry, against real child processes (small Python
scripts whose behaviour each test picks), on asyncio and on uvloop (the daemon's loop)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest

from securellm_bridge.local.backends.children import (ChildRegistry, child_environment,
                                                      is_alive, kill_stale_children, start_time)
from securellm_bridge.local.backends.output import clean
from securellm_bridge.local.backends.process import SupervisedProcess
from securellm_bridge.local.backends.states import (Launch, NotReady, ProcessEvent, RestartPolicy,
                                                    StartupFailed, State)

pytestmark = pytest.mark.anyio
LOGGER = "securellm_bridge.test_process"
BOTH_LOOPS = pytest.mark.parametrize("anyio_backend", [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
FAST = RestartPolicy(max_crashes=3, window=60.0, backoff_initial=0.01, backoff_max=0.05)

CHILD = textwrap.dedent("""
    import signal, sys, time
    mode = sys.argv[1]
    print("hello on stdout", flush=True)
    print("hello on stderr", file=sys.stderr, flush=True)
    if mode == "fail":
        print("E fatal: cannot open the thing", file=sys.stderr, flush=True)
        sys.exit(1)
    if mode == "busy":
        print("E port is busy", file=sys.stderr, flush=True)
        sys.exit(1)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "linger":
        terms = []
        def on_term(signum, frame):
            terms.append(signum)
            print(f"SIGTERM {len(terms)}", flush=True)
            if len(terms) == 2:
                sys.exit(1)
        signal.signal(signal.SIGTERM, on_term)
    if mode == "noisy":
        print("x" * 10000, flush=True)
        print("\\x1b[31mred\\x1b[0m and a bell\\x07", flush=True)
    if mode != "never":
        print("READY", flush=True)
    while True:
        time.sleep(1)
""")


class Child:
    """A SupervisedProcess of CHILD; ``modes`` gives the mode of each successive launch.
    Waiters (:meth:`wait_for`) wake at every transition and every line of output."""

    def __init__(self, tmp_path: Path, *modes: str, **kwargs: object) -> None:
        self.script = tmp_path / "child.py"
        self.script.write_text(CHILD)
        self.modes = list(modes)
        self.launches = 0
        self.ready = False
        self.events: list[ProcessEvent] = []
        self.changed = asyncio.Condition()
        options: dict[str, object] = {"ready_timeout": 10.0, "policy": FAST, "grace": 5.0,
                                      "parse": _parse, **kwargs}
        self.proc = SupervisedProcess(  # type: ignore[arg-type]
            "toy-model", self._launch, self._probe, program="toy",
            logger=logging.getLogger(LOGGER), **options)
        self.proc.on_event(self._record)
        self.proc.on_output(self._watch)

    def _launch(self) -> Launch:
        mode = self.modes[min(self.launches, len(self.modes) - 1)]
        self.launches += 1
        self.ready = False
        return Launch((sys.executable, str(self.script), mode), child_environment())

    async def _probe(self) -> bool:
        return self.ready

    def _watch(self, line: object) -> None:
        if getattr(line, "text") == "READY":
            self.ready = True
        asyncio.get_running_loop().create_task(self._notify())

    def _record(self, event: ProcessEvent) -> None:
        self.events.append(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    def transitions(self) -> list[tuple[str, str]]:
        return [(e.old.value, e.new.value) for e in self.events]


def _parse(line: str) -> tuple[int, str]:
    return (logging.ERROR, line[2:]) if line.startswith("E ") else (logging.INFO, line)


def _gone(pid: int) -> bool:
    """Reaped: no /proc entry at all (a zombie would still have one)."""
    return not Path(f"/proc/{pid}").exists()


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff_initial=0.5, backoff_max=30.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 7, 8)] == [0.5, 1.0, 2.0, 4.0, 30.0, 30.0]


def test_clean_strips_escapes_and_control_characters() -> None:
    assert clean(b"\x1b[1m\x1b[38;5;214mbold\x1b[0m\tx\x07\r") == "bold\tx"
    assert clean(b"caf\xc3\xa9 \xff") == "caf\u00e9 \ufffd"


def test_child_environment_passes_only_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("LLAMA_ARG_PORT", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    env = child_environment({"EXTRA": "yes"})
    assert "OPENAI_API_KEY" not in env and "LLAMA_ARG_PORT" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["EXTRA"] == "yes"
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.slow
@BOTH_LOOPS
async def test_start_log_use_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    child = Child(tmp_path, "plain")
    await child.proc.start()
    pid = child.proc.pid
    assert pid is not None and child.proc.state is State.READY
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and group
    async with child.proc.use():
        assert child.proc.in_flight == 1
    assert child.proc.in_flight == 0

    await child.proc.stop()
    assert child.proc.state is State.STOPPED
    assert child.proc.last_exit is not None
    assert child.proc.last_exit.returncode == -signal.SIGTERM
    assert child.proc.last_exit.signals == ("SIGTERM",)
    assert _gone(pid)
    assert child.transitions() == [("stopped", "starting"), ("starting", "ready"),
                                   ("ready", "stopping"), ("stopping", "stopped")]
    lines = {(r.getMessage(), getattr(r, "SECURELLM_STREAM", None)) for r in caplog.records
             if getattr(r, "SECURELLM_MODEL", None) == "toy-model"
             and getattr(r, "SECURELLM_PID", None) == pid}
    assert ("hello on stdout", "stdout") in lines and ("hello on stderr", "stderr") in lines
    with pytest.raises(NotReady):
        async with child.proc.use():
            pass


@pytest.mark.slow
async def test_startup_failure_names_the_error_and_reaps(tmp_path: Path) -> None:
    child = Child(tmp_path, "fail")
    with pytest.raises(StartupFailed) as info:
        await child.proc.start()
    assert "exited with status 1 during start-up" in str(info.value)
    assert "fatal: cannot open the thing" in str(info.value)
    assert "hello on stdout" in info.value.log_tail
    assert child.proc.state is State.FAILED
    assert child.transitions() == [("stopped", "starting"), ("starting", "failed")]


@pytest.mark.slow
async def test_not_ready_in_time_is_killed_and_reaped(tmp_path: Path) -> None:
    child = Child(tmp_path, "never", ready_timeout=0.5)
    with pytest.raises(StartupFailed, match="not ready after 0.5 s"):
        await child.proc.start()
    assert child.proc.last_exit is not None
    assert child.proc.last_exit.returncode == -signal.SIGKILL
    assert child.proc.state is State.FAILED


@pytest.mark.slow
async def test_retryable_startup_failure_starts_again(tmp_path: Path) -> None:
    child = Child(tmp_path, "busy", "plain",
                  retryable=lambda tail: any("port is busy" in line for line in tail))
    await child.proc.start()
    assert child.launches == 2 and child.proc.restarts == 0
    assert child.transitions() == [("stopped", "starting"), ("starting", "ready")]
    await child.proc.stop()


@pytest.mark.slow
async def test_second_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    child = Child(tmp_path, "linger")
    await child.proc.start()
    await child.proc.stop(grace=0.3)
    assert child.proc.last_exit is not None
    assert child.proc.last_exit.signals == ("SIGTERM", "SIGTERM")
    assert child.proc.last_exit.returncode == 1
    assert child.events[-1].reason == "exited with status 1 after SIGTERM, SIGTERM"
    assert "SIGTERM 2" in child.proc.log_tail


@pytest.mark.slow
async def test_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    child = Child(tmp_path, "stubborn", kill_after=0.2)
    await child.proc.start()
    pid = child.proc.pid
    assert pid is not None
    await child.proc.stop(grace=0.2)
    assert child.proc.last_exit is not None
    assert child.proc.last_exit.signals == ("SIGTERM", "SIGTERM", "SIGKILL")
    assert child.proc.last_exit.returncode == -signal.SIGKILL
    assert _gone(pid)


@pytest.mark.slow
@BOTH_LOOPS
async def test_crash_while_ready_restarts(tmp_path: Path) -> None:
    child = Child(tmp_path, "plain")
    await child.proc.start()
    first = child.proc.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await child.wait_for(lambda: len(child.events) == 4)
    assert child.transitions()[2:] == [("ready", "starting"), ("starting", "ready")]
    assert child.proc.restarts == 1 and child.proc.pid != first
    crash = child.events[-2]
    assert (crash.old, crash.new, crash.returncode) == (State.READY, State.STARTING, -9)
    assert crash.restarts == 1 and "restart 1" in crash.reason
    assert _gone(first)
    await child.proc.stop()


@pytest.mark.slow
async def test_crash_loop_fails(tmp_path: Path) -> None:
    child = Child(tmp_path, "plain")
    await child.proc.start()
    for crashes in range(1, FAST.max_crashes + 1):
        pid = child.proc.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        if crashes < FAST.max_crashes:
            await child.wait_for(lambda: child.proc.state is State.READY and child.proc.pid != pid)
    await child.wait_for(lambda: child.proc.state is State.FAILED)
    assert child.proc.restarts == FAST.max_crashes - 1
    assert child.events[-1].reason.startswith(f"crash loop: {FAST.max_crashes} crashes within 60 s")


@pytest.mark.slow
async def test_restarts_that_fail_end_in_failed(tmp_path: Path) -> None:
    child = Child(tmp_path, "plain", "fail")
    await child.proc.start()
    pid = child.proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await child.wait_for(lambda: child.proc.state is State.FAILED)
    assert child.launches == FAST.max_crashes
    assert ("starting", "starting") in child.transitions()  # a restart that failed again
    assert "fatal: cannot open the thing" in child.events[-1].reason


@pytest.mark.slow
async def test_drain_waits_for_requests_in_flight(tmp_path: Path) -> None:
    child = Child(tmp_path, "plain")
    await child.proc.start()
    release = asyncio.Event()

    async def request() -> None:
        async with child.proc.use():
            await release.wait()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert child.proc.in_flight == 1
    assert await child.proc.drain(0.05) is False
    assert child.proc.state is State.DRAINING
    with pytest.raises(NotReady, match="draining"):
        async with child.proc.use():
            pass
    release.set()
    assert await child.proc.drain(5.0) is True
    await task
    await child.proc.stop()
    assert child.proc.state is State.STOPPED


@pytest.mark.slow
async def test_stop_during_start_up(tmp_path: Path) -> None:
    child = Child(tmp_path, "never")
    starting = asyncio.create_task(child.proc.start())
    await child.wait_for(lambda: "hello on stdout" in child.proc.log_tail)
    await child.proc.stop()
    with pytest.raises(NotReady, match="stopped before it was ready"):
        await starting
    assert child.proc.state is State.STOPPED


@pytest.mark.slow
async def test_output_lines_are_bounded_and_cleaned(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    child = Child(tmp_path, "noisy")
    await child.proc.start()
    await child.proc.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    long = [m for m in messages if m.startswith("xxx")]
    assert long == ["x" * 4096 + " [truncated]"]
    assert "red and a bell" in messages
    assert messages.index("red and a bell") > messages.index(long[0])


HELPER = textwrap.dedent("""
    import asyncio, logging, sys, uvloop
    from securellm_bridge.local.backends.children import child_environment
    from securellm_bridge.local.backends.process import SupervisedProcess
    from securellm_bridge.local.backends.states import Launch

    async def main():
        async def probe():
            return True
        proc = SupervisedProcess("orphan-check", lambda: Launch(("sleep", "1000"),
                                 child_environment()), probe, program="sleep",
                                 logger=logging.getLogger("helper"))
        await proc.start()
        print(proc.pid, flush=True)
        await asyncio.sleep(1000)

    uvloop.run(main())
""")


@pytest.mark.slow
def test_children_die_with_a_killed_daemon(tmp_path: Path) -> None:
    helper = subprocess.Popen([sys.executable, "-c", HELPER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": "daemon"})
    with helper:
        assert helper.stdout is not None
        child = int(helper.stdout.readline())
        kill_parent_then_check(helper, child)


def kill_parent_then_check(helper: subprocess.Popen[str], child: int) -> None:
    """SIGKILL ``helper`` (a daemon stand-in), then expect its supervised ``child`` to die."""
    try:
        assert is_alive(child)
        helper.kill()
        helper.wait()
        deadline = time.monotonic() + 10
        while is_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not is_alive(child)
    finally:
        helper.kill()
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True)


@pytest.mark.slow
async def test_kill_stale_children(tmp_path: Path) -> None:
    path = tmp_path / "children.json"
    stale = _spawn("sleep", "1000")
    reused = _spawn("sleep", "1000")  # stands for a pid now owned by someone else
    leftover = _spawn("sh", "-c", "sleep 1000 & exec sleep 999")
    try:
        registry = ChildRegistry(path)
        await registry.add("stale-model", stale.pid, "sleep")
        await registry.add("reused", reused.pid, "sleep")
        await registry.add("runner-parent", leftover.pid, "sh")
        # As if the pid of "reused" now belonged to a process started at another time:
        entries = json.loads(path.read_text())
        for entry in entries:
            if entry["pid"] == reused.pid:
                entry["start_time"] -= 1
        path.write_text(json.dumps(entries))
        while Path(f"/proc/{leftover.pid}/cmdline").read_bytes() != b"sleep\x00999\x00":
            await asyncio.sleep(0.01)  # `sh` has forked its background sleep once it execs
        leftover.kill()  # the group leader dies, its child remains in the group
        leftover.wait()
        members = [int(p) for p in os.listdir("/proc") if p.isdigit() and is_alive(int(p))
                   and _pgid(int(p)) == leftover.pid]
        assert members

        killed = await kill_stale_children(path)

        assert sorted(r.name for r in killed) == ["runner-parent", "stale-model"]
        assert stale.wait(5) == -signal.SIGKILL
        assert reused.poll() is None
        assert not any(is_alive(p) for p in members)
        assert not path.exists()
        assert await kill_stale_children(path) == []
    finally:
        for p in (stale, reused, leftover):
            p.kill()
            p.wait()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_start_time_of_a_missing_process_is_none() -> None:
    assert start_time(os.getpid()) is not None
    assert start_time(2**22 + 1) is None

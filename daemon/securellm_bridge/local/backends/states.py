"""The vocabulary of supervised processes: states, transition events, how to launch,
the restart policy, exit information and the start-up errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from securellm_bridge.errors import Unavailable


class State(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """One state transition (``old`` may equal ``new``: a restart that failed again)."""

    name: str
    old: State
    new: State
    reason: str
    pid: int | None
    restarts: int
    returncode: int | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """How to run the child once; the environment is not shown (it may hold a key)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_crashes: int = 5
    window: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, crashes: int) -> float:
        """Seconds before the restart that follows the ``crashes``-th recent crash."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, crashes - 1))


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How the last process ended: its status and the signals the supervisor sent it."""

    pid: int
    returncode: int
    signals: tuple[str, ...]


class StartupFailed(Unavailable):
    """The child exited, or was not ready in time, before it ever became ready."""

    code = "backend_start_failed"

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.log_tail = tuple(log_tail)


class NotReady(Unavailable):
    code = "backend_not_ready"

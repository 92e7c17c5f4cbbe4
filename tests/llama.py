"""Find and run the real llama-server that .ci/build-llama-server.sh caches.

``llama_server_binary()`` honours ``$LLAMA_SERVER_BIN`` first, then the versioned cache
``${XDG_CACHE_HOME:-~/.cache}/securellm/llama-server-<version>/llama-server``.
``require_llama_server()`` is what tests call: it skips when the binary is absent on a
developer machine and fails under CI (``$CI`` set), where the build step must have run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "build-llama-server.sh"


def cached_binary_path() -> Path:
    """Where the build script caches the binary (it may not exist)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "securellm" / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "llama-server"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def llama_server_binary() -> Path | None:
    """``$LLAMA_SERVER_BIN`` if set, else the cached build; None when that file is not executable."""
    override = os.environ.get("LLAMA_SERVER_BIN")
    path = Path(override) if override else cached_binary_path()
    return path if _executable(path) else None


def require_llama_server() -> Path:
    """The binary, or skip (developer machine) / fail (``$CI`` set) with how to get it."""
    binary = llama_server_binary()
    if binary is not None:
        return binary
    override = os.environ.get("LLAMA_SERVER_BIN")
    where = f"$LLAMA_SERVER_BIN={override}" if override else str(cached_binary_path())
    reason = f"no executable llama-server at {where}; build it with {BUILD_SCRIPT} (~6 min)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_llama_server(binary: Path, model: Path, *, ctx: int, log_path: Path,
                     extra_args: Sequence[str] = (), ready_timeout: float = 60.0
                     ) -> Iterator[RunningServer]:
    """Start ``binary`` on a free loopback port, wait for ``/health`` to say ok, stop it on exit.

    stdout and stderr go to ``log_path``; the server is terminated with SIGTERM, then
    SIGKILL if it has not exited after 10 s (it lingers while a request is running).
    """
    port = free_port()
    args = [str(binary), "--host", "127.0.0.1", "--port", str(port), "-m", str(model),
            "-c", str(ctx), "-ngl", "0", "--no-webui", *extra_args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base_url, log_path, ready_timeout)
        yield RunningServer(base_url=base_url, process=process, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path,
                  timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"llama-server was not healthy after {timeout} s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")

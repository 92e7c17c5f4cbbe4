"""What ``/proc`` says about a process the benchmarks watch: memory, CPU time, children, argv."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (10^6 bytes)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, kb, _ = line.split()
                values[name[:-1]] = int(kb) * 1024 / 1e6
    return values["VmRSS"], values["VmHWM"]


def pss_mb(pid: int) -> float:
    """Proportional set size in MB: shared pages split among the processes that map them."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (with its reaped children excluded)."""
    if pid == os.getpid():
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def audit_writer(pid: int) -> int | None:
    """The daemon's audit writer process (``securellm_bridge.audit.child``), if it runs one."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"securellm_bridge.audit.child" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def cmdline(pid: int) -> list[str]:
    """A process's argv."""
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]

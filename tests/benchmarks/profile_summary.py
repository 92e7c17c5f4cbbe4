"""Summarise a py-spy ``--format raw`` profile of the bridge: where its CPU time goes.

    python -m tests.benchmarks.profile_summary bridge-plain.pyspy.txt bridge-plain.perf.data ...

py-spy (without ``--native``) sees Python frames only: time in C (the uvloop loop, aiohttp's
C HTTP parser, json) is charged to the Python frame that called it, and time in the event loop
with no Python frame above it is shown as "event loop (uvloop: ...)". The benchmark records with
``--gil``: only samples of a thread holding the GIL, i.e. running Python; OpenSSL and blocking
syscalls release the GIL and are not in this view (``perf`` shows them, by binary). py-spy
samples wall-clock time, so a thread preempted while holding the GIL still counts: on a busy
machine the shares are approximate.

Two views: *stages* (inclusive: a sample counts for a stage when the stage's frame is on the
stack; stages nest, so they do not add up to 100 %) and *self time by file* (the innermost
Python frame, grouped by file).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class Stage:
    """A sample counts for the stage when a frame contains one of ``any_of``, every string of
    ``all_of`` is in some frame and no frame contains one of ``none_of``."""

    label: str
    any_of: tuple[str, ...]
    all_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()

    def matches(self, frames: tuple[str, ...]) -> bool:
        def has(needle: str) -> bool:
            return any(needle in f for f in frames)

        return (any(has(n) for n in self.any_of) and all(has(n) for n in self.all_of)
                and not any(has(n) for n in self.none_of))


_PROVIDER = "OpenAIProvider._post "
STAGES: list[Stage] = [
    Stage("aiohttp server: request in (TLS read, HTTP parse, dispatch)", ("RequestHandler.data_received",)),
    Stage("Pipeline.handle: the bridge's request path, all of it", ("Pipeline.handle ",)),
    Stage("  read body", ("_read_body ",)),
    Stage("  validate: parse JSON + check", ("securellm_bridge/api/validate.py",)),
    Stage("  authenticate + authorize (key hash, cert subject)", ("authenticate (securellm_bridge",
                                                                  "authorize (securellm_bridge")),
    Stage("  estimate_prompt_tokens", ("estimate_prompt_tokens ",)),
    Stage("  rate limits (RateLimiter, Reservation)", ("securellm_bridge/security/ratelimit.py",)),
    Stage("  budget check / usage record", ("securellm_bridge/usage.py",)),
    Stage("  router bookkeeping (candidates, order, breaker, stats)", ("securellm_bridge/router/",),
          none_of=("securellm_bridge/providers/", "ratelimit.py", "metrics.py")),
    Stage("  provider: send the upstream request (providers/client.py, wire.py)", (_PROVIDER,)),
    Stage("  provider: read + parse the upstream reply", ("Response.read ", "usage_from ", "loads (json",
                                                          "Response.release "),
          all_of=("OpenAIProvider.complete ",), none_of=(_PROVIDER,)),
    Stage("  stream: OpenAIStream (forward runs of events, usage JSON)", ("OpenAIStream.__aiter__ ",)),
    Stage("    of which SSEParser.feed", ("SSEParser.feed ",)),
    Stage("  stream: write to client (prepare/write/write_eof)", ("StreamResponse.write ", "StreamResponse.prepare ",
                                                                  "StreamResponse.write_eof "),
          all_of=("Pipeline.handle ",)),
    Stage("  settle (usage, cost, token metrics)", ("Pipeline._settle ",)),
    Stage("  account (request metrics)", ("Pipeline._account ",)),
    Stage("  the upstream client's connection (chunked decoding, head parsing)", ("securellm_bridge/providers/wire.py",)),
    Stage("aiohttp server: send the response (finish_response)", ("RequestHandler.finish_response",)),
    Stage("upstream reply in (Connection.data_received)", ("Connection.data_received",)),
    Stage("any prometheus_client code", ("prometheus_client/",)),
    Stage("any stdlib json code", ("json/",)),
    Stage("any logging code", ("logging/",)),
    Stage("audit: hand records to the writer process", ("securellm_bridge/audit/",)),
    Stage("TLS records in Python's ssl wrapper (SSLObject.read/write)", ("SSLObject.read ", "SSLObject.write ")),
    Stage("TLS handshakes (SSLObject.do_handshake)", ("SSLObject.do_handshake",)),
    Stage("event loop (uvloop: epoll, socket I/O, callbacks; no Python frame)", ("@loop",)),
]


def load(paths: list[Path]) -> tuple[Counter[tuple[str, ...]], Counter[str]]:
    """Stacks (root first) and samples per thread name (py-spy ``--threads`` puts a
    ``thread (TID): NAME`` frame at the root; it is taken off the stack)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    threads: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = tuple(f for f in stack.split(";") if f)
            thread = "(all)"
            if frames and frames[0].startswith("thread ("):
                thread = frames[0].split(": ", 1)[-1]
                frames = frames[1:]
            if frames and frames[-1].startswith("Runner.run (asyncio/runners.py"):
                frames += ("@loop",)
            stacks[frames] += int(count)
            threads[thread] += int(count)
    return stacks, threads


def _file(frame: str) -> str:
    if frame == "@loop":
        return "(event loop, no Python frame)"
    at = frame.rfind(" (")
    return frame[at + 2:].rsplit(":", 1)[0] if at >= 0 else frame


def summarize(*paths: Path, top: int = 15) -> str:
    stacks, threads = load(list(paths))
    total = sum(stacks.values())
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", ""]
    if len(threads) > 1 or "(all)" not in threads:
        lines += ["| thread | share |", "|---|---|"]
        lines += [f"| {name} | {n / total:.1%} |" for name, n in threads.most_common()]
        lines.append("")
    lines += ["| stage (inclusive) | share |", "|---|---|"]
    for stage in STAGES:
        n = sum(c for frames, c in stacks.items() if stage.matches(frames))
        if n:
            lines.append(f"| {stage.label.replace('  ', '&nbsp;&nbsp;')} | {n / total:.1%} |")
    by_file: Counter[str] = Counter()
    for frames, c in stacks.items():
        by_file[_file(frames[-1]) if frames else "?"] += c
    lines += ["", "| self time by file | share |", "|---|---|"]
    for name, n in by_file.most_common(top):
        lines.append(f"| {name} | {n / total:.1%} |")
    return "\n".join(lines)


#: (group, substrings of a binary's name), first match wins
BINARY_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Python interpreter (all Python code: aiohttp, the bridge, asyncio glue, stdlib)", ("libpython", "python3")),
    ("kernel (syscalls, loopback TCP, scheduling)", ("[kernel",)),
    ("TLS: OpenSSL (libcrypto, libssl, _ssl)", ("libcrypto", "libssl", "_ssl.")),
    ("uvloop (event loop, transports)", ("loop.cpython",)),
    ("aiohttp C (HTTP parser, writer, helpers)", ("_http_parser", "_http_writer", "_helpers", "_websocket")),
    ("multidict / yarl / frozenlist C", ("_multidict", "_quoting", "propcache", "yarl", "_frozenlist")),
    ("asyncio C (tasks, futures)", ("_asyncio.",)),
    ("json C accelerator", ("_json.",)),
    ("libc (malloc, memcpy, ...)", ("libc.so", "libc-", "ld-linux")),
]


def perf_by_binary(path: Path) -> str:
    """CPU cycles by binary from a ``perf record`` file (needs the ``perf`` tool)."""
    import subprocess

    out = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
                         capture_output=True, text=True).stdout
    shares: Counter[str] = Counter()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith("#") or not parts[0].endswith("%"):
            continue
        dso = " ".join(parts[1:])
        group = next((g for g, needles in BINARY_GROUPS if any(n in dso for n in needles)), "other")
        shares[group] += float(parts[0][:-1])
    if not shares:
        return "(perf recorded nothing)"
    lines = ["| CPU cycles by binary (perf) | share |", "|---|---|"]
    lines += [f"| {group} | {share:.1f}% |" for group, share in shares.most_common()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for a in argv:
        print(perf_by_binary(Path(a)) if a.endswith(".data") else summarize(Path(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

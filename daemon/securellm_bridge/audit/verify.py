"""Verify the chain over a run of records; report the first problem.

Rules, record by record (``prev`` = the last good record, or the anchor before the window):

* ``seq == prev.seq + 1`` and the HMAC over ``prev.chain`` matches: good.
* ``seq == 1`` and the HMAC over the genesis value matches: a new chain (a new state dir or
  a new key); noted, not a failure.
* the same ``seq`` and chain value as a record already seen: a duplicate (a batch re-sent
  after a crash, see ``state.py``); noted, not a failure.
* ``seq == prev.seq + 1`` but the HMAC does not match: **modified** (or written by someone
  without the key: a forgery).
* ``seq`` beyond ``prev.seq + 1``: **reordered** when a missing number turns up within the
  next records, else a **gap** (deleted records).
* ``seq`` at or below ``prev.seq``: **reordered**, or a **forged** record when another record
  with that number was seen.

Without an anchor the first record's own HMAC cannot be checked (its predecessor is not in
the window, e.g. rotated away); verification starts from it and says so.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

from .chain import GENESIS, is_chain_value, verifies
from .reader import Entry

ProblemKind = Literal["malformed", "modified", "gap", "reordered", "forged", "conflict"]
LOOKAHEAD = 1000
_RECENT = 10000


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    where: str
    message: str


@dataclass(frozen=True)
class Report:
    source: str
    records: int
    first_seq: int | None
    last_seq: int | None
    problem: Problem | None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Run:
    def __init__(self, key: bytes, anchor: Entry | None) -> None:
        self.key = key
        self.prev: tuple[int, str] | None = None
        self.recent: OrderedDict[int, str] = OrderedDict()
        self.notes: list[str] = []
        self.count = 0
        self.first: int | None = None
        if anchor is not None and anchor.seq is not None and is_chain_value(anchor.chain):
            self.prev = (anchor.seq, anchor.chain)

    def _good(self, seq: int, chain: str) -> None:
        self.prev = (seq, chain)
        self.recent[seq] = chain
        if len(self.recent) > _RECENT:
            self.recent.popitem(last=False)
        self.count += 1
        if self.first is None:
            self.first = seq

    def check(self, e: Entry, rest: Iterator[Entry]) -> Problem | None:
        seq, chain = e.seq, e.chain
        if seq is None or not is_chain_value(chain):
            return Problem("malformed", seq, e.where, f"malformed record at {e.where}: no valid "
                           "SECURELLM_SEQ/SECURELLM_CHAIN (not written by securellm-bridge)")
        if self.recent.get(seq) == chain:
            self.notes.append(f"duplicate of seq {seq} at {e.where} (re-sent after a crash)")
            return None
        if self.prev is None:
            if seq == 1 and verifies(self.key, GENESIS, e.fields):
                self._good(seq, chain)
                return None
            if seq == 1:
                return Problem("modified", seq, e.where, f"record seq 1 at {e.where} does not verify: "
                               "modified, forged, or checked with the wrong key")
            self.notes.append(f"verification starts at seq {seq}: earlier records are not available "
                              "(before --since, rotated or vacuumed), so this first record is taken as given")
            self._good(seq, chain)
            return None
        pseq, pchain = self.prev
        if seq == pseq + 1:
            if verifies(self.key, pchain, e.fields):
                self._good(seq, chain)
                return None
            return Problem("modified", seq, e.where, f"record seq {seq} at {e.where} does not verify: "
                           "modified, or forged by a writer without the key")
        if seq == 1 and verifies(self.key, GENESIS, e.fields):
            self.notes.append(f"a new chain starts at seq 1 ({e.where}) after seq {pseq}")
            self._good(seq, chain)
            return None
        if seq > pseq + 1:
            missing = range(pseq + 1, seq)
            for later in itertools.islice(rest, LOOKAHEAD):
                if later.seq in missing:
                    return Problem("reordered", later.seq, later.where,
                                   f"reordered: record seq {later.seq} ({later.where}) comes after seq {seq}")
            span = f"seq {pseq + 1}" if seq == pseq + 2 else f"seq {pseq + 1}..{seq - 1}"
            return Problem("gap", pseq + 1, e.where, f"sequence gap: {span} missing between seq {pseq} "
                           f"and seq {seq} ({e.where}): deleted records, or a forged record")
        if seq in self.recent:
            return Problem("forged", seq, e.where, f"a second, different record with seq {seq} at {e.where}: "
                           "forged or modified")
        return Problem("reordered", seq, e.where, f"reordered: record seq {seq} ({e.where}) comes after seq {pseq}")


def verify(entries: Iterable[Entry], key: bytes, *, source: str, anchor: Entry | None = None) -> Report:
    """Check records in the order they were stored; stops at the first problem."""
    run = _Run(key, anchor)
    it = iter(entries)
    problem = None
    for e in it:
        problem = run.check(e, it)
        if problem is not None:
            break
    last = run.prev[0] if run.prev is not None and run.count else None
    return Report(source, run.count, run.first, last, problem, tuple(run.notes))


def verify_merged(runs: list[list[Entry]], key: bytes, *, source: str, anchor: Entry | None = None) -> Report:
    """Check the union of several stores (e.g. the journal and the JSONL fallback) by seq.

    A record found in more than one store must be identical in each; the union is then
    checked in sequence order, so a record missing from one store but present in another is
    not a gap. Order within a store is not checked here (verify each store for that).
    """
    by_seq: dict[int, Entry] = {}
    for entries in runs:
        for e in entries:
            seq = e.seq
            if seq is None or not is_chain_value(e.chain):
                return Report(source, 0, None, None, Problem("malformed", seq, e.where,
                                                             f"malformed record at {e.where}"))
            seen = by_seq.get(seq)
            if seen is not None and dict(seen.fields) != dict(e.fields):
                return Report(source, 0, None, None, Problem(
                    "conflict", seq, e.where, f"two different records with seq {seq}: {seen.where} and {e.where}"))
            by_seq.setdefault(seq, e)
    ordered = [by_seq[s] for s in sorted(by_seq)]
    return verify(ordered, key, source=source, anchor=anchor)

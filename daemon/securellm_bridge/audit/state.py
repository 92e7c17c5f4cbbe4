"""``audit.state`` in the state dir: the chain's position, written ahead of every batch.

Before a batch of records is sent, the file is replaced (write, fsync, rename) with the new
last ``seq``/``chain`` and the batch itself as ``pending``; after the batch is delivered it is
replaced again with ``pending`` empty. So after any crash, SIGKILL included, the next start
knows the last sequence number that was handed out, and re-sends the records of a batch that
may not have been delivered. A record that was delivered before the crash is then present
twice, with the same sequence number and chain value; ``audit verify`` treats such an exact
repeat as a duplicate, not as tampering.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import StateError
from .chain import GENESIS, is_chain_value
from .pipe import write_all

STATE_FILE = "audit.state"
VERSION = 1


@dataclass(frozen=True)
class ChainState:
    seq: int = 0
    chain: str = GENESIS
    key_id: str = ""
    pending: tuple[Mapping[str, str], ...] = field(default=())


class StateFile:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> ChainState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ChainState()
        except (OSError, ValueError) as exc:
            raise StateError(f"audit state {self.path} is unreadable ({type(exc).__name__}); restore it from a "
                             "backup, or remove it to start a new chain at seq 1") from None
        state = _parse(data)
        if state is None:
            raise StateError(f"audit state {self.path} is malformed; restore it from a backup, "
                             "or remove it to start a new chain at seq 1")
        return state

    def save(self, state: ChainState, *, durable: bool, pending_json: str | None = None) -> None:
        """Atomically replace the file; ``durable`` also fsyncs it and its directory.

        ``pending_json``: ``state.pending`` already rendered as a JSON array (the writer has
        each record's JSON text at hand), so it is not encoded again.
        """
        if pending_json is None:
            pending_json = json.dumps([dict(p) for p in state.pending], ensure_ascii=False, separators=(",", ":"))
        head = json.dumps({"version": VERSION, "seq": state.seq, "chain": state.chain, "key_id": state.key_id},
                          ensure_ascii=False, separators=(",", ":"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, f'{head[:-1]},"pending":{pending_json}}}'.encode("utf-8"))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if durable:
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _parse(data: Any) -> ChainState | None:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    seq, chain, key_id, pending = data.get("seq"), data.get("chain"), data.get("key_id"), data.get("pending")
    if not (isinstance(seq, int) and seq >= 0 and isinstance(chain, str) and is_chain_value(chain)
            and isinstance(key_id, str) and isinstance(pending, list)):
        return None
    records: list[Mapping[str, str]] = []
    for p in pending:
        if not (isinstance(p, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in p.items())):
            return None
        records.append(p)
    return ChainState(seq, chain, key_id, tuple(records))


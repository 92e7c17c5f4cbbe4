"""The pipes between the daemon and its audit writer process: framing and messages.

Each message is one frame: a 4-byte little-endian length, then the ``marshal`` encoding of a
tuple whose first item is the message's tag. ``marshal`` is the cheapest encoder of the plain
values records hold (measured on request rows: 0.34 µs a record, pickle 0.40, JSON 3.5), it
needs no import in the writer, and both ends run the same interpreter (``sys.executable``),
so they agree on its format. It refuses subclasses of built-in types (an ``IntEnum``, say):
``encode_records`` then converts the values to the plain types first.

Daemon → writer, on the writer's stdin:

* ``(INIT, settings)``, once, first: a ``Settings`` dict;
* ``(RECORDS, first_id, records)``: records numbered ``first_id``, ``first_id + 1``, …; each
  is ``(event name, values, time.time(), priority)``, where values is a dict of fields, or
  for a ``request`` a row in ``record.REQUEST_ROW`` order.

Writer → daemon, on the writer's stdout:

* ``(READY, last_seq)`` once the chain key and position are loaded (and a batch interrupted
  by a crash re-sent);
* ``(FAILED, message)`` when they cannot be (a ``StateError``); the writer then exits 1;
* ``(ACK, last_id, last_seq, journal, file, fallback, errors)`` once the records up to
  ``last_id`` are delivered; the four counts are those since the previous ACK, for the
  daemon's Prometheus counters (``/metrics`` is served by the daemon).
"""

from __future__ import annotations

import marshal
import os
from typing import Any, Sequence, TypedDict

from .record import FieldValue

INIT, RECORDS, READY, FAILED, ACK = range(5)
_HEADER = 4

#: ``(event name, values, when, priority)``: what the daemon sends for each record.
Record = tuple[str, Any, float, int]


class Settings(TypedDict):
    """What the writer process needs, sent in the INIT message (never logged: ``chain_key``)."""

    state_dir: str
    file: str | None
    rotate: str
    rotate_max_bytes: int
    retention_days: int
    #: The configured key's value, or None for the key file in the state dir.
    chain_key: str | None
    #: The daemon's ``[log] level`` for its own loggers, e.g. ``INFO``.
    log_level: str


def frame(message: tuple[Any, ...]) -> bytes:
    data = marshal.dumps(message)
    return len(data).to_bytes(_HEADER, "little") + data


def encode_records(first_id: int, records: Sequence[Record]) -> bytes:
    """One RECORDS frame; values of subclassed types are converted to plain ones first."""
    try:
        return frame((RECORDS, first_id, records))
    except ValueError:  # "unmarshallable object": a subclass somewhere
        return frame((RECORDS, first_id, [(name, _plain_values(values), when, priority)
                                          for name, values, when, priority in records]))


def _plain_values(values: Any) -> Any:
    if isinstance(values, dict):
        return {name: plain(v) for name, v in values.items()}
    return tuple(plain(v) for v in values)


def plain(value: FieldValue) -> FieldValue:
    """``value`` as an exact built-in type (bool cannot be subclassed; an IntEnum becomes its int)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    return [str.__str__(v) for v in value]  # type: ignore[union-attr]


class Frames:
    """Splits a byte stream into messages (frames may arrive in pieces, or many at once)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out: list[tuple[Any, ...]] = []
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            while end - pos >= _HEADER:
                size = int.from_bytes(view[pos:pos + _HEADER], "little")
                if end - pos - _HEADER < size:
                    break
                out.append(marshal.loads(view[pos + _HEADER:pos + _HEADER + size]))
                pos += _HEADER + size
        del buf[:pos]
        return out

    @property
    def partial(self) -> bool:
        """Whether part of a frame is waiting for the rest."""
        return bool(self._buf)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking fd (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

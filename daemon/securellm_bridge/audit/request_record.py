"""Request records rendered from a plan made once: the audit writer's per-request work.

Every inference request makes one ``request`` record, so this is what the writer process
does most. ``record.build`` + ``chain.canonical_text`` handle any event: they build a dict of
the values, rename each field, format ``MESSAGE`` through a ``format_map`` and let the JSON
encoder sort ~26 keys, for every record. A request row always has the same fields in the same
order (``record.REQUEST_ROW``), so all of that can be decided once: the sorted order of the
journald fields, each one's JSON key, and ``MESSAGE``'s template with positional slots.

:func:`render_request` returns exactly what the generic path does (the same fields and values,
the same canonical text, so the same chain value; ``tests/test_audit_request_record.py``
checks it on random rows) at well under half the cost.
"""

from __future__ import annotations

import json
import string
from operator import itemgetter
from typing import Callable, Sequence

from .events import EVENTS
from .record import (EVENT, IDENTIFIER, PREFIX, REQUEST_ROW, SEQ, TIME, FieldValue, format_value, mask_secrets,
                     might_hold_secret, timestamp)

_EVENT = EVENTS["request"]
_WIDTH = len(REQUEST_ROW)

# The values ``render_request`` lists, in this order: the row's fields rendered, the fields the
# writer computes, then the constant ones.
_NAMES = [PREFIX + name.upper() for name in REQUEST_ROW] + ["MESSAGE", SEQ, TIME, "PRIORITY"]
_CONSTANT = {"MESSAGE_ID": _EVENT.message_id, "SYSLOG_IDENTIFIER": IDENTIFIER, EVENT: _EVENT.name}
_encode = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _order() -> tuple[tuple[str, ...], tuple[str, ...], Callable[[Sequence[str | None]], tuple[str | None, ...]]]:
    """The journald names in canonical (sorted) order, each one's ``"NAME":`` JSON prefix, and
    a getter that picks the values of a record in that order (constants included)."""
    listed = _NAMES + list(_CONSTANT)
    names = sorted(listed)
    position = {name: i for i, name in enumerate(listed)}
    return tuple(names), tuple(_encode(n) + ":" for n in names), itemgetter(*(position[n] for n in names))


_SORTED, _KEYS, _in_order = _order()
_CONSTANT_VALUES = list(_CONSTANT.values())


def _summary() -> tuple[str, Callable[[Sequence[str | None]], tuple[str | None, ...]]]:
    """``MESSAGE``'s template with positional slots, and a getter of the row values it takes."""
    slots: list[int] = []
    parts: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(_EVENT.summary):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            if spec or conversion:
                raise ValueError(f"the request summary's field {name!r} has a format spec or conversion")
            parts.append("{" + str(len(slots)) + "}")
            slots.append(REQUEST_ROW.index(name))
    getter = itemgetter(*slots)
    return "".join(parts), getter


_TEMPLATE, _summary_values = _summary()


def render_request(row: Sequence[FieldValue], *, seq: int, when: float, priority: int) -> tuple[dict[str, str], str]:
    """The journald fields of a request record (without ``SECURELLM_CHAIN``) and their
    canonical text: what ``record.build`` + ``chain.canonical_text`` give for the row's fields
    by name (``dict(zip(REQUEST_ROW, row))``)."""
    if len(row) != _WIDTH:
        raise ValueError(f"a request row has {_WIDTH} values, got {len(row)}")
    # What record.build does per value, inline: a call per value would cost more than the test.
    values: list[str | None] = [v if type(v) is str else str(v) if type(v) is int else  # type: ignore[misc]
                                None if v is None else format_value(v) for v in row]
    if might_hold_secret("\0".join([v for v in values if v])):
        values = [None if v is None else mask_secrets(v) for v in values]
    values.append(_TEMPLATE.format(*["-" if v is None else v for v in _summary_values(values)]))
    values.append(str(seq))
    values.append(timestamp(when))
    values.append(str(priority))
    values.extend(_CONSTANT_VALUES)
    ordered = _in_order(values)
    fields = {name: v for name, v in zip(_SORTED, ordered) if v is not None}
    text = "{" + ",".join([key + _encode(v) for key, v in zip(_KEYS, ordered) if v is not None]) + "}"
    return fields, text

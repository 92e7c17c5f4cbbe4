"""The tamper-evident chain over audit records.

For record *n*::

    SECURELLM_CHAIN(n) = hex(HMAC-SHA256(key, bytes.fromhex(SECURELLM_CHAIN(n-1)) || canonical(n)))

with ``SECURELLM_CHAIN(0)`` = 64 zeros (a chain starts at ``SECURELLM_SEQ=1``).
``canonical(n)`` is the UTF-8 JSON object of the record's covered fields, keys sorted, no
whitespace (``separators=(",", ":")``), non-ASCII kept as is. The covered fields are
``MESSAGE``, ``MESSAGE_ID``, ``PRIORITY``, ``SYSLOG_IDENTIFIER`` and every ``SECURELLM_*``
field except ``SECURELLM_CHAIN``; all values are the strings journald stores. Fields that
journald adds itself (``_PID``, timestamps, cursors, ...) are not covered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Callable, Mapping

from .record import CHAIN, PREFIX

GENESIS = "0" * 64
COVERED = frozenset({"MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER"})


def covered(fields: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if (k in COVERED or k.startswith(PREFIX)) and k != CHAIN}


def canonical(fields: Mapping[str, str]) -> bytes:
    return canonical_text(covered(fields)).encode("utf-8")


def _canonical_encoder() -> Callable[[Mapping[str, str]], str]:
    # The C encoder made once, as json.dumps(..., sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False) makes it on every call (same output; no circular-reference check,
    # which a flat dict of strings does not need).
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
        return dumps
    c = make(None, None, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    return lambda fields: "".join(c(fields, 0))


#: ``canonical_text(fields)``: the canonical JSON of ``fields`` as a str, for fields that are all
#: covered (what ``record.build`` returns); ``canonical`` filters first.
canonical_text = _canonical_encoder()


def link(key: bytes, previous: str, fields: Mapping[str, str]) -> str:
    """The chain value of a record that follows the record whose chain value is ``previous``."""
    return link_canonical(key, previous, canonical(fields))


def link_canonical(key: bytes, previous: str, data: bytes) -> str:
    """``link`` for a record whose canonical form ``data`` is already encoded."""
    return hmac.digest(key, bytes.fromhex(previous) + data, "sha256").hex()


def verifies(key: bytes, previous: str, fields: Mapping[str, str]) -> bool:
    claimed = fields.get(CHAIN, "")
    return hmac.compare_digest(link(key, previous, fields), claimed)


def key_id(key: bytes) -> str:
    """A fingerprint that identifies a key without revealing it (kept in the state file)."""
    return hmac.new(key, b"securellm-audit-key-id", hashlib.sha256).hexdigest()[:16]


def is_chain_value(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)

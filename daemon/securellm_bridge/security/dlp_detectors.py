"""The DLP detectors' finders: each yields validated ``(start, end)`` spans of one type.

The registry that names them, and the scan that combines their spans, are in ``dlp.py``.
Finders never return or keep the matched text. The rules, and the decisions about tricky
negatives, are documented in ``docs/DLP.md``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import string
from collections.abc import Callable, Iterator

Span = tuple[int, int]
Finder = Callable[[str], Iterator[Span]]

_A = re.ASCII
# Digit-led patterns start with a digit class so that the regex engine can skip straight to
# candidate positions; the "not preceded by" check therefore comes after the first digit as
# a two-character lookbehind: ``\d(?<![X]\d)`` means "the character before this digit is
# not in X" (and holds at the start of the text).
_DIGIT = re.compile(r"\d", _A)


# Phone numbers, SSNs and card numbers all have at least seven digits close together.
_SEVEN_DIGITS = re.compile(r"\d" + r"[ ().-]{0,2}\d" * 6, _A)
_GITHUB_PREFIX = re.compile(r"gh[pousr]_|github_pat_", _A)
_DOTTED = re.compile(r"\d\.\d{1,3}\.\d", _A)


def has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


def has_seven_digits(text: str) -> bool:
    return _SEVEN_DIGITS.search(text) is not None


def has_ip_shape(text: str) -> bool:
    return _DOTTED.search(text) is not None or "::" in text or text.count(":") >= 6


def has_github_prefix(text: str) -> bool:
    return _GITHUB_PREFIX.search(text) is not None


_NON_DIGIT = re.compile(r"\D", _A)


def _digits(s: str) -> str:
    return _NON_DIGIT.sub("", s)


# --- EMAIL_ADDRESS ---------------------------------------------------------------------

# Found from the "@" (a literal the regex engine searches for quickly); the local part is
# then read backwards, at most 64 characters.
_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})"
    r"(?![\w-]|\.[A-Za-z0-9])(?P<scp>:\S)?",
    _A,
)
_EMAIL_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "._%+-")
# "icon@2x.png" is a file name, not an address.
_FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp bmp ico tif tiff pdf txt log js mjs ts tsx jsx css scss "
    "html htm json yaml yml toml lock vue".split()
)


def find_emails(text: str) -> Iterator[Span]:
    for m in _EMAIL_DOMAIN.finditer(text):
        at = start = m.start()
        while start > 0 and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        local = text[start:at]
        if not local or len(local) > 64 or local[0] == "." or local[-1] == "." or ".." in local:
            continue
        if m["tld"].lower() in _FILE_EXTENSIONS:
            continue
        if m["scp"]:  # user@host:path is an scp/ssh remote such as git@github.com:org/repo
            continue
        yield start, m.end("tld")


# --- PHONE_NUMBER ----------------------------------------------------------------------

_PHONE_END = r"(?![\w]|[.\-/]\d)"
# North American numbers need separators: a bare 10-digit run is too often an id. The
# optional "+1 " / "1-" in front is looked for separately (_NANP_PREFIX) so that the
# pattern starts with a character class, which the regex engine scans for quickly.
_PHONE_NANP = re.compile(
    r"[(\d](?:(?<=\()(?P<a1>\d{3})\)[ .-]?|(?<=\d)\d\d[ .-])(?P<ex>\d{3})[ .-]\d{4}"
    + _PHONE_END,
    _A,
)
_NANP_PREFIX = re.compile(r"(?:\+|\b)1[ .-]?$", _A)
_PHONE_INTL = re.compile(
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,5}(?:[ .-]?\d{2,5}){0,4}" + _PHONE_END, _A
)
# Any other number of 7-15 digits counts when a phone keyword comes right before it.
_PHONE_LOCAL = re.compile(r"\d(?<![\w.+\-/]\d)[\d ().-]{5,18}\d" + _PHONE_END, _A)
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|cellphone|fax|whatsapp|call\s+me|text\s+me|"
    r"reach\s+me)\b[\s:#.-]*(?:(?:number|no|nr|is|at|on|under)\b[\s:#.]*){0,2}\(?$",
    re.IGNORECASE | _A,
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", _A)
_PHONE_BEFORE = frozenset("+.-/_")


def _boundary_before(text: str, start: int, forbidden: frozenset[str]) -> bool:
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in forbidden)


def find_phones(text: str) -> Iterator[Span]:
    for m in _PHONE_NANP.finditer(text):
        area = m["a1"] or m[0][:3]
        if area[0] in "01" or m["ex"][0] in "01":
            continue
        start = m.start()
        prefix = _NANP_PREFIX.search(text, max(0, start - 3), start)
        if prefix:
            start = prefix.start()
        if _boundary_before(text, start, _PHONE_BEFORE):
            yield start, m.end()
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            if 8 <= len(_digits(m[0])) <= 15 and _boundary_before(text, m.start(), _PHONE_BEFORE):
                yield m.span()
    for m in _PHONE_LOCAL.finditer(text):
        if not 7 <= len(_digits(m[0])) <= 15 or _ISO_DATE.search(m[0]):
            continue
        start = m.start()
        if _PHONE_CONTEXT.search(text, max(0, start - 40), start):
            yield (start - 1 if text[start - 1] == "(" else start), m.end()


# --- US_SSN ----------------------------------------------------------------------------

# Dashed or spaced, or a bare nine-digit run right after "SSN" / "social security number".
_SSN = re.compile(
    r"\d(?<![\w.\-/]\d)\d\d(?:(?P<sep>[- ])\d\d(?P=sep)\d{4}" + _PHONE_END + r"|\d{6}(?!\w))", _A
)
_SSN_CONTEXT = re.compile(
    r"\b(?:ssn|social\s+security(?:\s+(?:number|no|#))?)\b[\s:#.]*(?:is\b[\s:]*)?$",
    re.IGNORECASE | _A,
)


def _valid_ssn(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def find_ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        if not _valid_ssn(_digits(m[0])):
            continue
        if m["sep"] or _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            yield m.span()


# --- CREDIT_CARD -----------------------------------------------------------------------

_CARD = re.compile(r"\d(?<![\w.\-/+]\d)(?:[ -]?\d){12,18}" + _PHONE_END, _A)
# Device identifiers (IMEI and friends) are Luhn-checked too.
_CARD_NOT_AFTER = re.compile(r"\b(?:IMEI|MEID|IMSI)\b[\s:#.=-]*$", re.IGNORECASE | _A)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        raw = m[0]
        digits = _digits(raw)
        if digits[0] not in "23456" or not luhn_ok(digits):
            continue
        seps = {c for c in raw if not c.isdigit()}
        if len(seps) > 1:
            continue
        if seps and not all(3 <= len(g) <= 6 for g in raw.split(seps.pop())):
            continue
        if _CARD_NOT_AFTER.search(text, max(0, m.start() - 12), m.start()):
            continue
        yield m.span()


# --- IBAN ------------------------------------------------------------------------------

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN = re.compile(r"(?P<cc>[A-Z](?<![A-Za-z0-9][A-Z])[A-Z])\d\d(?: ?[A-Z0-9]){11,30}", _A)


def iban_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def find_ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(m["cc"])
        if length is None:
            continue
        # The regex may run on into the next upper-case word: cut at the country's length.
        end, seen = m.start(), 0
        while seen < length and end < m.end():
            if text[end] != " ":
                seen += 1
            end += 1
        if seen < length or (end < len(text) and text[end].isalnum()):
            continue
        if iban_ok(text[m.start():end].replace(" ", "")):
            yield m.start(), end


# --- IP_ADDRESS ------------------------------------------------------------------------

_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)", _A)
# A dotted quad right after one of these is a version or section number, not an address.
_IPV4_NOT_AFTER = re.compile(
    r"(?:\b(?:v|ver|version|release|rev|revision|build|firmware|section|chapter|clause|"
    r"paragraph|step|figure|table|fig)\b\.?[\s:=#]*|§\s*|[=<>!~]=|[\^~])$",
    re.IGNORECASE,
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?:%[0-9A-Za-z]+)?(?![\w:]|\.\w)",
    _A,
)
_HEX_DIGIT = re.compile(r"[0-9A-Fa-f]", _A)


def find_ips(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if _IPV4_NOT_AFTER.search(text, max(0, m.start() - 16), m.start()):
            continue
        try:
            ipaddress.IPv4Address(m[0])
        except ValueError:
            continue
        yield m.span()
    if "::" in text or text.count(":") >= 6:
        for m in _IPV6.finditer(text):
            if not _HEX_DIGIT.search(m[0]):
                continue
            try:
                ipaddress.IPv6Address(m[0])
            except ValueError:
                continue
            yield m.span()


# --- secrets ---------------------------------------------------------------------------

_API_KEY = re.compile(
    r"sk(?<![\w-]sk)(?:-(?P<body>[A-Za-z0-9_-]{20,})|_(?:live|test)_(?P<stripe>[A-Za-z0-9]{16,}))"
    r"(?![\w-])",
    _A,
)
_HAS_LETTER_AND_DIGIT = re.compile(r"(?=.*[A-Za-z])(?=.*\d)", _A | re.DOTALL)


def find_api_keys(text: str) -> Iterator[Span]:
    for m in _API_KEY.finditer(text):
        if _HAS_LETTER_AND_DIGIT.match(m["body"] or m["stripe"]):
            yield m.span()


_AWS = re.compile(r"A[KS]IA(?<![A-Za-z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])", _A)
_GITHUB = re.compile(
    r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{40,244})"
    r"(?![A-Za-z0-9_])",
    _A,
)
# A complete block, or a truncated one: the BEGIN line and whatever header and base64 lines
# follow it (a pasted fragment of a key is still a leak). Also matches JSON-escaped "\n".
# Either way it must hold key material: merely naming the armour lines is no leak.
_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:[\s\S]*?-----END (?P=kind)-----"
    r"|(?:(?:\s|\\n)+(?:[\w-]+:[^\n\\]*|[A-Za-z0-9+/=]{4,}))*)",
    _A,
)
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/]{16}", _A)


def find_private_keys(text: str) -> Iterator[Span]:
    for m in _PEM.finditer(text):
        if _KEY_MATERIAL.search(text, m.end("kind"), m.end()):
            yield m.span()


_JWT = re.compile(
    r"(?P<header>eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{8,})\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*(?![\w-])",
    _A,
)


def _regex_finder(pattern: re.Pattern[str]) -> Finder:
    def find(text: str) -> Iterator[Span]:
        for m in pattern.finditer(text):
            yield m.span()

    return find


def find_jwts(text: str) -> Iterator[Span]:
    for m in _JWT.finditer(text):
        header = m["header"]
        try:
            decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        except (binascii.Error, ValueError):
            continue
        if isinstance(decoded, dict) and "alg" in decoded:
            yield m.span()


find_github_tokens = _regex_finder(_GITHUB)
find_aws_keys = _regex_finder(_AWS)

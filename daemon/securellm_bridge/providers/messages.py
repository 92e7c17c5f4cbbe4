"""What the upstream client's responses are made of, apart from the socket: the error types,
the case-insensitive headers, and the decoding of a compressed body (bounded)."""

from __future__ import annotations

import zlib

#: Most bytes a compressed body may decode to.
MAX_DECODED = 256 * 1024 * 1024


class TransportError(Exception):
    """An upstream failure below HTTP semantics that is neither a timeout nor an ``OSError``."""


class MalformedResponse(TransportError):
    """The upstream's bytes are not a valid HTTP/1.1 response; the message says what, never a value."""


class Headers(dict[str, str]):
    """Response headers keyed by lower-case name; repeated fields joined with ``", "``."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def __repr__(self) -> str:  # names only: values may carry credentials echoed by an upstream
        return f"Headers({sorted(self)!r})"


class BodyDecoder:
    """Undoes ``Content-Encoding: gzip``/``deflate`` from an upstream that compresses anyway,
    at most :data:`MAX_DECODED` bytes (a small compressed body can expand without bound)."""

    __slots__ = ("_z", "_room")

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        if enc not in ("gzip", "x-gzip", "deflate"):
            raise MalformedResponse("an unsupported Content-Encoding")
        self._z: zlib._Decompress | None = None if enc == "deflate" else zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._room = MAX_DECODED

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._z is None:  # "deflate" is zlib-wrapped by the RFC, raw by some servers
            zlib_header = (data[0] & 0x0F) == 8 and (len(data) < 2 or ((data[0] << 8) | data[1]) % 31 == 0)
            self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        try:
            out = self._z.decompress(data, self._room + 1)
        except zlib.error:
            raise MalformedResponse("a body that does not decompress") from None
        self._room -= len(out)
        if self._room < 0:
            raise MalformedResponse("a compressed body larger than 256 MiB decoded")
        return out

    def flush(self) -> bytes:
        if self._z is None:
            return b""
        if not self._z.eof:
            raise MalformedResponse("a truncated compressed body")
        return self._z.flush()
